"""Where each usage quantity and dimension lives, in the official GenAI semantic
conventions (current and deprecated names) and in the conventions of the popular
instrumentation families: OpenInference (Arize), OpenLLMetry (Traceloop), OpenLIT.

Each tuple lists attribute keys in precedence order: official new > official old >
vendor. The first key present wins and the others are never added to it, so a span
carrying both an old and a new name (dual emitters) is counted once. The mapping
table for users is docs/conventions.md.
"""

INPUT_TOTAL = (
    "gen_ai.usage.input_tokens",              # official since v1.27
    "gen_ai.usage.prompt_tokens",             # official v1.26; OpenLLMetry before 0.48
    "llm.token_count.prompt",                 # OpenInference
)
OUTPUT_TOTAL = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
CACHE_READ = (
    "gen_ai.usage.cache_read.input_tokens",           # official v1.40; OpenLLMetry 0.5, OpenLIT
    "gen_ai.usage.cache_read_input_tokens",           # OpenLLMetry semconv-ai 0.4
    "llm.token_count.prompt_details.cache_read",      # OpenInference
    "gen_ai.usage.prompt_tokens_details.cached_tokens",  # older OpenLIT
)
CACHE_WRITE = (
    "gen_ai.usage.cache_write.input_tokens",          # genai conventions repo
    "gen_ai.usage.cache_creation.input_tokens",       # official v1.40; OpenLIT
    "gen_ai.usage.cache_creation_input_tokens",       # OpenLLMetry semconv-ai 0.4
    "llm.token_count.prompt_details.cache_write",     # OpenInference
    "gen_ai.usage.prompt_tokens_details.cache_creation_tokens",  # older OpenLIT
)
REASONING = (
    "gen_ai.usage.reasoning.output_tokens",           # official v1.41
    "gen_ai.usage.reasoning_tokens",                  # OpenLLMetry 0.5, OpenLIT
    "llm.usage.reasoning_tokens",                     # OpenLLMetry 0.4
    "llm.token_count.completion_details.reasoning",   # OpenInference
    "gen_ai.usage.completion_tokens_details.reasoning_tokens",  # older OpenLIT
)

INPUT_AUDIO = (
    "gen_ai.usage.audio.input_tokens",                # genai conventions repo
    "llm.token_count.prompt_details.audio",           # OpenInference (OpenAI prompt_tokens_details.audio_tokens)
)
INPUT_IMAGE = (
    "gen_ai.usage.image.input_tokens",                # genai conventions repo
    "llm.token_count.prompt_details.image",           # OpenInference
)
INPUT_VIDEO = (
    "gen_ai.usage.video.input_tokens",                # genai conventions repo draft (modality enum lists video)
)
OUTPUT_AUDIO = (
    "gen_ai.usage.audio.output_tokens",               # genai conventions repo
    "llm.token_count.completion_details.audio",       # OpenInference (completion_tokens_details.audio_tokens)
    "gen_ai.usage.completion_tokens_details.audio_tokens",  # OpenLIT's name
)
OUTPUT_IMAGE = (
    "gen_ai.usage.image.output_tokens",               # genai conventions repo
)
OUTPUT_VIDEO = (
    "gen_ai.usage.video.output_tokens",               # genai conventions repo draft
)
CACHED_AUDIO = ("gen_ai.usage.audio.cache_read.input_tokens",)   # genai conventions repo
CACHED_IMAGE = ("gen_ai.usage.image.cache_read.input_tokens",)
CACHED_VIDEO = ("gen_ai.usage.video.cache_read.input_tokens",)
"""The part of a modality's input read from the provider's cache: inside both ``cache_read`` and
the modality's input count, so it is billed once, as cache read."""

MODALITY_KEYS = frozenset(INPUT_AUDIO + INPUT_IMAGE + INPUT_VIDEO + OUTPUT_AUDIO + OUTPUT_IMAGE + OUTPUT_VIDEO
                          + CACHED_AUDIO + CACHED_IMAGE + CACHED_VIDEO)
"""Per-modality parts of the input and output totals (text is what is left). Looked at only when
a span has one of them, so spans without modality counts pay nothing for them."""

USAGE_KEYS = frozenset(INPUT_TOTAL + OUTPUT_TOTAL + CACHE_READ + CACHE_WRITE + REASONING) | MODALITY_KEYS

OPERATION = "gen_ai.operation.name"
OPERATION_FALLBACKS: tuple[tuple[str, dict[str, str]], ...] = (
    ("openinference.span.kind", {"llm": "chat", "embedding": "embeddings", "retriever": "retrieval",
                                 "agent": "invoke_agent", "tool": "execute_tool"}),
    ("llm.request.type", {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}),
    ("traceloop.span.kind", {"agent": "invoke_agent", "tool": "execute_tool", "workflow": "invoke_workflow"}),
)
"""Where a span has no ``gen_ai.operation.name``: (key, lower-cased value -> operation).
A value not in the map becomes the operation as written (lower case), e.g. ``chain``,
which is not billed for tokens."""

PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
PROVIDER_SPELLINGS = {
    "xai": "x_ai", "az.ai.openai": "azure.ai.openai", "az.ai.inference": "azure.ai.inference",
    "vertex_ai": "gcp.vertex_ai", "vertexai": "gcp.vertex_ai", "gemini": "gcp.gemini", "google": "gcp.gen_ai",
    "mistralai": "mistral_ai", "aws": "aws.bedrock", "amazon": "aws.bedrock", "ibm.watson.ai": "ibm.watsonx.ai",
}
"""Provider values are lower-cased, then these older or vendor spellings become the
official ones, so one provider is one dimension value whatever instrumented it."""

MODEL = (
    "gen_ai.response.model",        # the model that answered (a dated snapshot): what is billed
    "llm.response.model_name",      # OpenInference, newer
    "gen_ai.request.model",
    "llm.request.model_name",
    "llm.model_name",               # OpenInference
    "embedding.model_name",         # OpenInference embeddings
)

DIMENSION_KEYS = frozenset((OPERATION,) + PROVIDER + MODEL + tuple(key for key, _ in OPERATION_FALLBACKS))

INFERENCE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
"""Operations whose spans carry billable token usage. Agent, tool and workflow spans
(``invoke_agent``, ``create_agent``, ``invoke_workflow``, ``execute_tool``) and
framework spans (``chain``, ``task``) repeat their children's usage and are not billed
for tokens. A span with usage and no operation by any convention is billed."""

CACHE_EXCLUSIVE_EMITTERS = frozenset({("openlit", "anthropic"), ("openlit.instrumentation.anthropic", "anthropic")})
"""(emitter, provider) pairs known to report input tokens without cached tokens, against the
convention; the emitter is the resource's ``telemetry.sdk.name`` or the instrumentation scope's
name. OpenLIT's Anthropic instrumentation passes Anthropic's raw ``input_tokens``, which
excludes cache reads and writes: its own TracerProvider names the SDK ``openlit``, and beside an
application's TracerProvider (which it then uses) only its scope tells it apart. Anthropic's own
SDK tracing (``com.anthropic.sdk.python``), OpenLLMetry's and OpenInference's Anthropic
instrumentations add the cache counts into the input total, as the convention asks."""

AGGREGATE_OPERATIONS = frozenset({
    "invoke_agent", "invoke_workflow",  # core conventions v1.33 and v1.41
    "gen_ai.invocation.internal",       # genai conventions repository (PR #571): replaces the internal
    "handle_conversation_turn",         # invoke_agent/invoke_workflow spans; a runner's entry point
    "chain", "task",                    # OpenInference CHAIN, OpenLLMetry task (see OPERATION_FALLBACKS)
})
"""Operations of spans that group other GenAI operations (an agent run, a workflow, one turn of a
conversation): any token usage they carry repeats that of the model calls beneath them, so they
are never billed for tokens (they are not in INFERENCE_OPERATIONS). ``gen_ai.invocation.internal``
is written the way the conventions name span types, which are not on the wire; it is here in
case an emitter sends it as ``gen_ai.operation.name``."""

PLAN_OPERATIONS = frozenset({"plan"})
"""An agent's planning or task decomposition phase (genai conventions repository, ``gen_ai.plan.internal``):
the model call that makes the plan is its child and is billed there."""

MEMORY_OPERATIONS = frozenset({
    "create_memory_store", "delete_memory_store",                                   # memory store lifecycle
    "create_memory", "update_memory", "upsert_memory", "search_memory", "delete_memory",  # memory records
})
"""Memory operations of the genai conventions repository (``gen_ai.memory.client`` span). Counted,
never billed for tokens."""

STATUS_CODE = "otel.status_code"
"""The span's status as an attribute (``OK``, ``ERROR``), as OpenTelemetry writes it for formats
without a status field (Zipkin, Jaeger). The extractor gives an OTLP span's status under this key
when a meter asks for it and the span does not carry the attribute itself, so that a meter can
match a failed span (OpenInference marks a failed call only by its status)."""
STATUS_VALUES = {1: "OK", 2: "ERROR"}
"""OTLP ``Status.code`` (1 ok, 2 error) -> the attribute's value; unset (0) gives no attribute."""
