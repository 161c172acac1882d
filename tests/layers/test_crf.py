"""The linear-chain CRF functions and block, against brute-force enumeration of every tag path,
autograd, and pytorch-crf; TorchScript and ONNX export of the Viterbi decoding."""
from __future__ import annotations

import itertools
import time
import warnings

import pytest
import torch

from blocks.data.tag_schemes import allowed_transitions
from blocks.errors import WidthError
from blocks.layers.crf import (CRF, DISALLOWED, crf_log_likelihood, crf_log_partition, crf_marginals,
                               crf_path_score, crf_viterbi, viterbi_decode)
from blocks.values import SEQUENCE, TAG_SCORES, Sequence, Spec, TagScores


def random_scores(lengths: list[int], tags: int, length: int | None = None, constrained: bool = False,
                  dtype=torch.float32) -> TagScores:
    """Random scores for sentences of the given lengths; padded emissions hold garbage (NaN and
    huge numbers) that only the mask may hide. ``constrained``: some transitions, starts and ends
    forbidden (DISALLOWED added), as the CRF block does."""
    length = max(lengths) + 1 if length is None else length
    emissions = torch.randn(len(lengths), length, tags, dtype=dtype) * 2
    mask = torch.arange(length).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    emissions = emissions.masked_fill(~mask.unsqueeze(-1), float("nan"))
    emissions[:, :, 0] = emissions[:, :, 0].masked_fill(~mask, 1e30)
    transitions, start, end = torch.randn(tags, tags), torch.randn(tags), torch.randn(tags)
    if constrained:
        transitions = transitions + DISALLOWED * (torch.rand(tags, tags) < 0.3)
        start = start + DISALLOWED * (torch.arange(tags) == 1)
        end = end + DISALLOWED * (torch.arange(tags) == 2)
    return TagScores(emissions, mask, transitions.to(dtype), start.to(dtype), end.to(dtype))


def path_scores(scores: TagScores, row: int) -> dict[tuple[int, ...], float]:
    """Every tag path of one sentence and its score, by enumeration (float64)."""
    n = int(scores.mask[row].sum())
    e, t, s, f = (x.double() for x in (scores.emissions[row], scores.transitions, scores.start, scores.end))
    result = {}
    for path in itertools.product(range(t.shape[0]), repeat=n):
        result[path] = float(s[path[0]] + f[path[-1]] + sum(e[i, y] for i, y in enumerate(path))
                             + sum(t[a, b] for a, b in zip(path, path[1:])))
    return result


CASES = [([5, 3, 1], 3, False), ([4, 4, 2, 1], 4, False), ([5, 2, 3], 4, True), ([3, 1, 2], 3, True)]


@pytest.mark.parametrize("lengths, tags, constrained", CASES)
def test_against_brute_force(lengths, tags, constrained):
    scores = random_scores(lengths + [0], tags, constrained=constrained)  # an empty sentence too
    log_z = crf_log_partition(scores)
    best_tags, best_score = crf_viterbi(scores)
    marginals = crf_marginals(scores)
    gold = torch.randint(0, tags, scores.mask.shape).masked_fill(~scores.mask, -100)
    likelihood = crf_log_likelihood(scores, gold)
    for row, n in enumerate(lengths):
        paths = path_scores(scores, row)
        values = torch.tensor(list(paths.values()), dtype=torch.float64)
        brute_log_z = torch.logsumexp(values, dim=0)
        assert log_z[row].item() == pytest.approx(brute_log_z.item(), abs=1e-4)
        best = max(paths, key=paths.get)
        assert best_tags[row, :n].tolist() == list(best)
        assert best_score[row].item() == pytest.approx(paths[best], rel=1e-6, abs=1e-4)
        assert torch.all(best_tags[row, n:] == 0)
        path = tuple(gold[row, :n].tolist())
        assert likelihood[row].item() == pytest.approx(paths[path] - brute_log_z.item(), rel=1e-6, abs=1e-4)
        expected = torch.zeros(n, tags, dtype=torch.float64)
        probabilities = (values - brute_log_z).exp()
        for (p, probability) in zip(paths, probabilities):
            expected[torch.arange(n), torch.tensor(p)] += probability
        assert torch.allclose(marginals[row, :n].double(), expected, atol=1e-5)
        assert torch.all(marginals[row, n:] == 0)
    empty = len(lengths)
    assert log_z[empty] == 0 and best_score[empty] == 0 and likelihood[empty] == 0
    assert torch.all(best_tags[empty] == 0) and torch.all(marginals[empty] == 0)


def test_constrained_paths_never_decoded():
    torch.manual_seed(1)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    start_allowed, allowed, end_allowed = allowed_transitions(labels, "IOB2")
    block = CRF([Spec(SEQUENCE, len(labels))])
    block.constrain(start_allowed, allowed, end_allowed)
    emissions = torch.randn(64, 6, len(labels)) * 3
    emissions[:, :, [2, 4]] += 4  # I- tags are tempting everywhere
    mask = torch.arange(6).unsqueeze(0) < torch.randint(1, 7, (64, 1))
    scores = block(Sequence(emissions, mask))
    tags, _ = crf_viterbi(scores)
    for row in range(64):
        path = tags[row, :int(mask[row].sum())].tolist()
        assert start_allowed[path[0]] and all(allowed[a, b] for a, b in zip(path, path[1:])), path
    # with every transition allowed, the tempting I- tags do follow O
    free = CRF([Spec(SEQUENCE, len(labels))])
    free_tags, _ = crf_viterbi(free(Sequence(emissions, mask)))
    assert any(not allowed[a, b] for row in free_tags.tolist() for a, b in zip(row, row[1:]))


def test_marginals_equal_the_gradient_of_log_partition():
    scores = random_scores([7, 4, 1, 0], 5)
    emissions = scores.emissions.masked_fill(~scores.mask.unsqueeze(-1), 0.0).requires_grad_(True)
    log_z = crf_log_partition(scores._replace(emissions=emissions))
    (gradient,) = torch.autograd.grad(log_z.sum(), emissions)
    marginals = crf_marginals(scores)
    assert torch.allclose(marginals, gradient, atol=1e-5)
    sums = marginals.sum(dim=-1)
    assert torch.allclose(sums[scores.mask], torch.ones(int(scores.mask.sum())), atol=1e-5)
    assert torch.all(sums[~scores.mask] == 0)


def test_gradients_are_finite_despite_garbage_padding_and_pass_gradcheck():
    scores = random_scores([4, 2, 0], 3)
    leaves = [scores.emissions.clone().requires_grad_(True)] + [
        x.clone().requires_grad_(True) for x in (scores.transitions, scores.start, scores.end)]
    gold = torch.randint(0, 3, scores.mask.shape)
    loss = -crf_log_likelihood(TagScores(leaves[0], scores.mask, *leaves[1:]), gold).sum()
    loss = loss + crf_marginals(TagScores(leaves[0], scores.mask, *leaves[1:])).pow(2).sum()
    loss.backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)
    assert torch.all(leaves[0].grad[~scores.mask] == 0)

    real = random_scores([3, 2, 0], 3, length=3, dtype=torch.float64)
    emissions = real.emissions.masked_fill(~real.mask.unsqueeze(-1), 0.0)
    inputs = (emissions, real.transitions, real.start, real.end)
    inputs = tuple(x.clone().requires_grad_(True) for x in inputs)
    real_gold = torch.randint(0, 3, real.mask.shape)

    def functions(e, t, s, f):
        scores = TagScores(e, real.mask, t, s, f)
        return crf_log_likelihood(scores, real_gold), crf_marginals(scores)

    # the functions compute in float32, so the check uses float32-sized steps and tolerances
    assert torch.autograd.gradcheck(functions, inputs, eps=1e-3, atol=2e-3, rtol=2e-3)


def test_float32_inside_under_autocast_and_half_inputs():
    scores = random_scores([30, 12, 0], 6)
    reference = crf_log_partition(scores), crf_marginals(scores), crf_viterbi(scores)
    half = TagScores(*(x.to(torch.bfloat16) if x.is_floating_point() else x for x in scores))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_z, marginals, (tags, best) = crf_log_partition(half), crf_marginals(half), crf_viterbi(half)
    assert log_z.dtype == marginals.dtype == best.dtype == torch.float32
    assert torch.allclose(log_z, reference[0], rtol=2e-2)  # bf16 inputs, float32 sums
    assert torch.isfinite(marginals).all()
    long_scores = random_scores([2000], 9)  # long sentence: log-sum-exp keeps it finite
    assert torch.isfinite(crf_log_partition(long_scores)).all()
    assert torch.isfinite(crf_marginals(long_scores)).all()


def test_zero_length_batch_axis():
    scores = TagScores(torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.bool), torch.zeros(3, 3),
                       torch.zeros(3), torch.zeros(3))
    assert crf_log_partition(scores).tolist() == [0.0, 0.0]
    tags, best = crf_viterbi(scores)
    assert tags.shape == (2, 0) and best.tolist() == [0.0, 0.0]
    assert crf_marginals(scores).shape == (2, 0, 3)
    assert crf_log_likelihood(scores, torch.zeros(2, 0, dtype=torch.long)).tolist() == [0.0, 0.0]


def test_agrees_with_pytorch_crf():
    torchcrf = pytest.importorskip("torchcrf")
    torch.manual_seed(2)
    reference = torchcrf.CRF(5, batch_first=True)
    lengths = [9, 6, 1, 4]  # pytorch-crf needs the first position real: no empty sentence here
    scores = random_scores(lengths, 5)
    scores = scores._replace(transitions=reference.transitions.detach(), start=reference.start_transitions.detach(),
                             end=reference.end_transitions.detach())
    emissions = scores.emissions.masked_fill(~scores.mask.unsqueeze(-1), 0.0)
    gold = torch.randint(0, 5, scores.mask.shape)
    expected = reference(emissions, gold, mask=scores.mask, reduction="none")
    assert torch.allclose(crf_log_likelihood(scores, gold), expected, atol=1e-4)
    decoded = reference.decode(emissions, mask=scores.mask)
    tags, _ = crf_viterbi(scores)
    assert [tags[row, :n].tolist() for row, n in enumerate(lengths)] == decoded
    assert torch.allclose(crf_path_score(scores, gold) - crf_log_partition(scores), expected, atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated, still works
def test_viterbi_compiles_with_torchscript():
    scripted = torch.jit.script(crf_viterbi)
    scripted_tensors = torch.jit.script(viterbi_decode)
    for lengths in ([5, 3, 0], [1], [8, 8, 2, 7]):
        scores = random_scores(lengths, 4, constrained=True)
        expected = crf_viterbi(scores)
        for tags, best in (scripted(scores), scripted_tensors(*scores)):
            assert torch.equal(tags, expected[0]) and torch.allclose(best, expected[1])


class _Decoder(torch.nn.Module):
    """A CRF block and its Viterbi decoding, as an exported tagging model ends."""

    def __init__(self, crf: CRF):
        super().__init__()
        self.crf = crf
        self.decode = torch.jit.script(viterbi_decode)

    def forward(self, emissions, mask):
        return self.decode(*self.crf(Sequence(emissions, mask)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated, still works
def test_viterbi_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    crf = CRF([Spec(SEQUENCE, len(labels))])
    crf.constrain(*allowed_transitions(labels, "IOB2"))
    model = _Decoder(crf).eval()
    example = random_scores([4, 2], len(labels))
    path = tmp_path / "viterbi.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example.emissions, example.mask), str(path), input_names=["emissions", "mask"],
                          output_names=["tags", "score"], opset_version=17, dynamo=False,
                          dynamic_axes={"emissions": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"}})
    session = onnxruntime.InferenceSession(str(path))
    for lengths in ([9, 1, 0, 5], [1], [3, 3]):  # other batch sizes and lengths than the example's
        scores = random_scores(lengths, len(labels))
        emissions = scores.emissions.masked_fill(~scores.mask.unsqueeze(-1), 0.0)
        tags, best = session.run(None, {"emissions": emissions.numpy(), "mask": scores.mask.numpy()})
        expected = model(emissions, scores.mask)
        assert torch.equal(torch.from_numpy(tags), expected[0])
        assert torch.allclose(torch.from_numpy(best), expected[1], atol=1e-4)


def test_block_spec_parameters_constraints_and_state():
    block = CRF([Spec(SEQUENCE, 4)])
    assert block.output_spec == Spec(TAG_SCORES, 4)
    names = {name for name, _ in block.named_parameters()}
    assert names == {"transitions", "start", "end"}
    state = block.state_dict()
    assert {"start_allowed", "allowed", "end_allowed"} <= set(state) and state["allowed"].dtype == torch.bool
    emissions = Sequence(torch.randn(2, 3, 4), torch.tensor([[True, True, True], [True, False, False]]))
    out = block(emissions)
    assert isinstance(out, TagScores) and out.emissions is emissions.values and out.mask is emissions.mask
    assert torch.equal(out.transitions, block.transitions)
    allowed = torch.ones(4, 4, dtype=torch.bool)
    allowed[0, 1] = False
    start_allowed = torch.tensor([True, False, True, True])
    block.constrain(start_allowed, allowed, torch.ones(4, dtype=torch.bool))
    out = block(emissions)
    assert out.transitions[0, 1].item() == pytest.approx(block.transitions[0, 1].item() + DISALLOWED)
    assert out.start[1].item() == pytest.approx(block.start[1].item() + DISALLOWED)
    assert torch.equal(out.transitions[allowed], block.transitions[allowed])
    fresh = CRF([Spec(SEQUENCE, 4)])
    fresh.load_state_dict(block.state_dict())  # the constraints travel with the weights
    assert torch.equal(fresh.allowed, allowed) and torch.equal(fresh.start_allowed, start_allowed)
    loss = -crf_log_likelihood(out, torch.zeros(2, 3, dtype=torch.long)).sum()
    loss.backward()
    assert block.transitions.grad is not None and block.start.grad.abs().sum() > 0
    with pytest.raises(WidthError, match=r"allowed must have shape \(4, 4\) for 4 tags, got \(3, 3\)"):
        block.constrain(start_allowed, torch.ones(3, 3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    with pytest.raises(WidthError):
        CRF([Spec(TAG_SCORES, 4)])


def test_block_is_registered():
    from blocks.registry import BLOCKS

    assert BLOCKS.get("CRF") is CRF


def test_marginals_speed_on_a_conll_sized_batch(capsys):
    """Not an assertion on time: prints the milliseconds (a batch of 32 sentences up to 40 words,
    9 tags, one thread) for the record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        lengths = torch.randint(1, 41, (32,), generator=generator).tolist()
        lengths[0] = 40
        scores = random_scores(lengths, 9, length=40)
        crf_marginals(scores)
        start = time.perf_counter()
        for _ in range(10):
            marginals = crf_marginals(scores)
        elapsed = (time.perf_counter() - start) / 10
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(marginals.sum(-1)[scores.mask], torch.ones(int(scores.mask.sum())), atol=1e-5)
    with capsys.disabled():
        print(f"\ncrf_marginals: {elapsed * 1000:.2f} ms per batch of 32 x 40 x 9 (one thread)")
