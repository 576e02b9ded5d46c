"""The demo shows explanations, which arrive in their own records after the recommendation, that fit
the item: the model's when it names the item, else one built from the item's own fields, marked as such."""

from types import SimpleNamespace

from schemas.records import Explanation
from vip5.demo import Tally


def _tally():
    catalogue = [SimpleNamespace(item_id="p1", title="Nike Women Blue Running Shoe", article_type="Sports Shoes"),
                 SimpleNamespace(item_id="p2", title="Puma Men Black Watch", article_type="Watches")]
    return Tally(catalogue, [SimpleNamespace(user_id="u1", likes=("Watches",))])


def test_a_generated_explanation_that_names_the_item_is_shown():
    assert _tally().explain("p1", "women blue running shoe") == '"women blue running shoe"'


def test_a_generic_explanation_is_replaced_by_the_items_own_fields():
    shown = _tally().explain("p2", "women blue top")
    assert "Puma Men Black Watch" in shown and "from the item's fields" in shown
    assert "watches" in _tally().explain("p2", "")


def test_an_explanation_record_is_shown_on_its_own_line_and_counted():
    tally = _tally()
    explanation = Explanation(request_id="r1", user_id="u1", item_id="p2", text="men black watch",
                              model_version="m", adapter_version="v1", event_time_ms=1_000, publish_time_ms=1_250)
    line = tally.add_explanation(explanation)
    assert line.strip().startswith("u1, why Watches:") and '"men black watch"' in line and "[250 ms]" in line
    assert tally.explanations == 1 and tally.recs == 0
