"""Per-domain expert load at the final evaluation (what the run report's heatmaps show)."""

from __future__ import annotations

import torch

from moemix.moe_model import MoEConfig, MoETransformer
from moemix.training.expert_load import expert_load_by_domain
from moemix.training.stream import eval_batches

TINY = MoEConfig(
    vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_expert=32
)


def test_counts_every_routed_slot_of_each_domain_as_the_model_routes_it(markov_data):
    torch.manual_seed(0)
    model = MoETransformer(TINY)
    model.train()
    # batches of 3 sequences: counts must add up over batches (routing is per sequence, so batching
    # does not change them)
    load = expert_load_by_domain(model, markov_data, seq_len=32, eval_tokens=256, batch_size=3)
    assert model.training  # left as it was
    assert load["top_k"] == 2 and load["split"] == "valid"
    counts = {d: torch.tensor(c) for d, c in load["counts"].items()}
    assert set(counts) == set(markov_data.domains)
    for d, c in counts.items():
        assert c.shape == (2, 4)  # [MoE layer, expert]
        assert c.sum(-1).tolist() == [load["tokens"][d] * 2] * 2, d  # each token's top-2 slots, once

    # the same sequences in one batch, split by domain the model's own way (its kept top-k indices)
    xs, ids = [], []
    for i, d in enumerate(("d0", "d1")):
        (x, _), *rest = eval_batches(markov_data, d, seq_len=32, max_tokens=256, batch_size=64)
        assert not rest and x.shape[1] == 32  # one batch of full sequences per domain
        xs.append(x)
        ids.append(torch.full((x.shape[0],), i))
    model.eval()
    with torch.no_grad():
        model(torch.cat(xs))
    by_domain = model.expert_load_by_domain(torch.cat(ids), 2)  # [layer, domain, expert]
    assert torch.equal(by_domain[:, 0], counts["d0"]) and torch.equal(by_domain[:, 1], counts["d1"])
    # the Markov domains differ, and so does their routing
    assert not torch.equal(counts["d0"], counts["d3"])


def test_a_model_without_routed_experts_records_nothing(markov_data):
    dense = torch.nn.Sequential(torch.nn.Embedding(64, 8))
    assert expert_load_by_domain(dense, markov_data, seq_len=32, eval_tokens=64) is None
