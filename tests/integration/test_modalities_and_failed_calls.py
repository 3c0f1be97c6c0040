"""Audio tokens and failed calls through the real server: SDK OTLP/gRPC exporter -> server -> chDB -> usage API."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, export, totals

AUDIO_CARD = """\
currency: USD
models:
  - match: "gpt-4o-audio*"
    prices: {input_tokens: "2.50", output_tokens: "10.00", input_audio_tokens: "40.00", output_audio_tokens: "80.00"}
"""


def test_audio_chat_bills_text_and_audio_tokens_once_each_at_their_own_prices_and_a_failed_call_no_tokens(
        meter_server: MeterServer) -> None:
    meter_server.stop()
    meter_server.write_config(rate_card=AUDIO_CARD)
    meter_server.start()
    factory = SpanFactory()
    audio_chat = factory.span({  # as OpenInference records an OpenAI audio chat completion
        "openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o-audio-preview",
        "llm.token_count.prompt": 150, "llm.token_count.completion": 50, "llm.token_count.total": 200,
        "llm.token_count.prompt_details.audio": 50, "llm.token_count.completion_details.audio": 20,
    }, resource={"customer.id": "acme"}, name="ChatCompletion")
    rate_limited = factory.span({  # as OpenLLMetry records an HTTP 429: error.type, no usage
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-audio-preview",
        "error.type": "RateLimitError",
    }, resource={"customer.id": "acme"}, name="openai.chat")
    assert export(meter_server, [audio_chat, rate_limited]) == SpanExportResult.SUCCESS

    assert totals(meter_server.usage(group_by="meter"), "meter") == {
        ("input_tokens",): (100, "0.00025"),          # 150 prompt tokens, 50 of them audio: 100 x 2.50 / 1e6
        ("input_audio_tokens",): (50, "0.002"),       # 50 x 40.00 / 1e6
        ("output_tokens",): (30, "0.0003"),           # 50 completion tokens, 20 of them audio: 30 x 10.00 / 1e6
        ("output_audio_tokens",): (20, "0.0016"),     # 20 x 80.00 / 1e6
        ("failed_calls",): (1, "0.00"),               # counted, unpriced by this card
    }
    assert meter_server.usage(group_by="") == [{"quantity": 201, "unpriced_quantity": 1, "amount": "0.00415",
                                                "currency": "USD"}]
