"""Training prompts: families, templates and candidate lists drawn from the training split only."""

import numpy as np
import pytest

from model_worker.offline.data import LeaveOneOut, leave_one_out, load_amazon_reviews, load_p5_folder
from model_worker.offline.tasks import SequenceSampler, TaskConfig, TrainingSampler
from model_worker.vip5model.prompts import TEMPLATES


def test_training_prompts_never_show_held_out_items_or_templates(beauty_dir):
    data = load_p5_folder(beauty_dir)
    split = leave_one_out(data.sequences)
    sampler = TrainingSampler(data, split, TaskConfig(train_candidates=9))
    held_out = {e.user: {e.target} for e in split.test}
    for e in split.valid:
        held_out[e.user].add(e.target)
    prompts = sampler.sample(300, np.random.default_rng(0))
    assert {p.task for p in prompts} == {"sequential", "direct"}  # the Beauty cut has no explanations
    for prompt in prompts:
        assert not TEMPLATES[prompt.template_id].held_out
        user = int(prompt.source.split("user_")[1].split()[0])
        if prompt.target not in ("yes", "no"):
            assert int(prompt.target) not in held_out.get(user, set())
        if TEMPLATES[prompt.template_id].target == "item" and prompt.task == "direct":
            assert prompt.target in prompt.image_item_ids and len(prompt.image_item_ids) >= 10


def test_explanation_prompts_come_from_the_training_split(reviews_file):
    data = load_amazon_reviews(reviews_file, core=1)
    sampler = TrainingSampler(data, leave_one_out(data.sequences), TaskConfig(family_weights=(0, 0, 1)))
    train_texts = {e.text for e in data.explanations if e.split == "train"}
    prompts = sampler.sample(50, np.random.default_rng(1))
    assert all(p.task == "explanation" and p.target in train_texts for p in prompts)


def test_task_config_names_the_bad_field():
    with pytest.raises(ValueError, match="history_len"):
        TaskConfig(history_len=0)
    with pytest.raises(ValueError, match="family_weights"):
        TaskConfig(family_weights=(0, 0, 0))


def test_sequence_batches_draw_every_user_alike_the_longest_too():
    # 1,000 users whose lengths 1..1,000 name them; batches of 10 are cut from sorted pools of 500
    sequences = [list(range(1, 2 + n)) for n in range(1000)]
    sampler = SequenceSampler(LeaveOneOut(train=sequences, valid=[], test=[]), bos=1001, max_len=1000)
    rng = np.random.default_rng(0)
    drawn = np.zeros(len(sequences))
    for _ in range(3000):
        rows = sampler.sample(10, rng)
        assert rows.shape[0] == 10 and (rows[:, 0] == 1001).all()
        drawn[(rows > 0).sum(dim=1).numpy() - 2] += 1
    # each user is drawn about 3000 * 10 / 1000 = 30 times, the shortest and the longest too
    assert drawn.sum() == 30000
    assert drawn[:10].mean() > 15 and drawn[-10:].mean() > 15
