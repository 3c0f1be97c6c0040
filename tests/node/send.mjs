// Sends GenAI spans to otel-meter with the OpenTelemetry JS SDK and its OTLP/gRPC exporter,
// in one export request, then exits. Used by tests/integration/test_node_exporter.py.
//
//   OTEL_METER_ENDPOINT=http://127.0.0.1:4317 CUSTOMER_ID=acme node send.mjs
//
// Token counts are plain JS numbers: the exporter sends an integral number as intValue and a
// non-integral one as doubleValue (otlp-transformer toAnyValue), which otel-meter rejects.
// Prints one JSON line: the export result codes and the spans sent. Exits 0 when every
// export call returned SUCCESS (a partial success is a success to the exporter; it logs a
// diag warning, which goes to stderr here).

import { diag, DiagConsoleLogger, DiagLogLevel, SpanKind } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';

const endpoint = process.env.OTEL_METER_ENDPOINT;
const customer = process.env.CUSTOMER_ID;
if (!endpoint || !customer) {
  console.error('set OTEL_METER_ENDPOINT (e.g. http://127.0.0.1:4317) and CUSTOMER_ID');
  process.exit(2);
}

diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);

const inner = new OTLPTraceExporter({ url: endpoint, timeoutMillis: 10000 });
const results = [];
const exporter = {
  export(spans, done) {
    inner.export(spans, (result) => {
      results.push({ code: result.code, spans: spans.length, error: result.error ? String(result.error) : undefined });
      done(result);
    });
  },
  shutdown: () => inner.shutdown(),
  forceFlush: () => inner.forceFlush(),
};

const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'node-app', 'customer.id': customer }),
  // One batch: every span goes out in a single OTLP request.
  spanProcessors: [new BatchSpanProcessor(exporter, { maxExportBatchSize: 512, scheduledDelayMillis: 60000 })],
});
const tracer = provider.getTracer('otel-meter-node-test', '1.0.0');

const spans = [
  {
    name: 'chat gpt-4o',
    attributes: {
      'gen_ai.operation.name': 'chat', 'gen_ai.provider.name': 'openai',
      'gen_ai.request.model': 'gpt-4o', 'gen_ai.response.model': 'gpt-4o-2024-08-06',
      'gen_ai.usage.input_tokens': 123457, 'gen_ai.usage.cache_read.input_tokens': 23457,
      'gen_ai.usage.output_tokens': 9876,
    },
  },
  {
    name: 'chat gpt-4o-mini',
    attributes: {
      'gen_ai.operation.name': 'chat', 'gen_ai.provider.name': 'openai', 'gen_ai.request.model': 'gpt-4o-mini',
      'gen_ai.usage.input_tokens': 1000, 'gen_ai.usage.output_tokens': 3000,
      'gen_ai.usage.reasoning.output_tokens': 2500,
    },
  },
  {
    // A non-integral JS number goes out as doubleValue 12.5: the whole span must be rejected.
    name: 'chat gpt-4o fractional',
    attributes: {
      'gen_ai.operation.name': 'chat', 'gen_ai.provider.name': 'openai', 'gen_ai.request.model': 'gpt-4o',
      'gen_ai.usage.input_tokens': 100, 'gen_ai.usage.output_tokens': 12.5,
    },
  },
];

for (const { name, attributes } of spans) {
  tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }).end();
}

await provider.forceFlush();
await provider.shutdown();
console.log(JSON.stringify({ results, spans }));
process.exit(results.length > 0 && results.every((r) => r.code === 0) ? 0 : 1);
