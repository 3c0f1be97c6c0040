"""The console of a server whose usage API has no auth: every page is open, as the API is, but
the console makes no changes (any page open in a browser could post them), and says so."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.integration.conftest import MeterServer

pytestmark = pytest.mark.integration

NEW_VERSION = """\
currency: USD
versions:
  - version: "2030-01"
    effective_from: 2030-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "2.00"}
"""


def test_without_auth_the_rate_cards_page_has_no_apply_form_and_says_why(meter_server: MeterServer) -> None:
    with urllib.request.urlopen(f"{meter_server.api_url}/rate-cards", timeout=30) as response:
        page = response.read().decode()
    assert 'id="apply-form"' not in page
    assert "the usage API has no auth, so the console makes no changes" in page

    form = urllib.parse.urlencode({"file": "rate-card.yaml", "card": NEW_VERSION}).encode()
    request = urllib.request.Request(f"{meter_server.api_url}/rate-cards", data=form, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert "the usage API has no auth" in refused.value.read().decode()
    with urllib.request.urlopen(f"{meter_server.api_url}/v1/rate-cards", timeout=30) as response:
        cards = json.load(response)["cards"]
    assert [version["version"] for card in cards for version in card["versions"]] == [cards[0]["in_force"]]
