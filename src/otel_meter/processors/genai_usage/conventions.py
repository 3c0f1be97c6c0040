"""Where each usage quantity and dimension lives in the GenAI semantic conventions.

Each tuple lists attribute keys in precedence order: the first key present wins and
the others are never added to it, so a span carrying both an old and a new name is
counted once. See docs/conventions.md for the rules per convention and provider.
"""

INPUT_TOTAL = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OUTPUT_TOTAL = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
CACHE_READ = ("gen_ai.usage.cache_read.input_tokens",)
CACHE_WRITE = ("gen_ai.usage.cache_write.input_tokens", "gen_ai.usage.cache_creation.input_tokens")
REASONING = ("gen_ai.usage.reasoning.output_tokens",)

USAGE_KEYS = frozenset(INPUT_TOTAL + OUTPUT_TOTAL + CACHE_READ + CACHE_WRITE + REASONING)

OPERATION = "gen_ai.operation.name"
PROVIDER = ("gen_ai.provider.name", "gen_ai.system")
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_MODEL = "gen_ai.request.model"

DIMENSION_KEYS = frozenset((OPERATION, RESPONSE_MODEL, REQUEST_MODEL) + PROVIDER)

INFERENCE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
"""Operations whose spans carry billable token usage. Agent and workflow spans
(``invoke_agent``, ``create_agent``, ``invoke_workflow``, ``execute_tool``) may repeat
their children's usage and are not billed for tokens."""

CACHE_EXCLUSIVE_EMITTERS = frozenset({("openlit", "anthropic")})
"""(telemetry.sdk.name, provider) pairs known to report input tokens without cached
tokens, against the convention. OpenLIT's Anthropic instrumentation passes Anthropic's
raw ``input_tokens``, which excludes cache reads and writes."""
