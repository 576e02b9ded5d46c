"""The demo shows explanations that fit the item: the model's when it names the item, else one built
from the item's own fields, marked as such."""

from types import SimpleNamespace

from vip5.demo import Tally


def _tally():
    catalogue = [SimpleNamespace(item_id="p1", title="Nike Women Blue Running Shoe", article_type="Sports Shoes"),
                 SimpleNamespace(item_id="p2", title="Puma Men Black Watch", article_type="Watches")]
    return Tally(catalogue, [SimpleNamespace(user_id="u1", likes=("Watches",))])


def test_a_generated_explanation_that_names_the_item_is_shown():
    assert _tally().explain(SimpleNamespace(item_id="p1", explanation="women blue running shoe")) == \
        '"women blue running shoe"'


def test_a_generic_explanation_is_replaced_by_the_items_own_fields():
    shown = _tally().explain(SimpleNamespace(item_id="p2", explanation="women blue top"))
    assert "Puma Men Black Watch" in shown and "from the item's fields" in shown
    assert "watches" in _tally().explain(SimpleNamespace(item_id="p2", explanation=None))
