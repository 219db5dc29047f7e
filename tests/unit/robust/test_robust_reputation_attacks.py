"""Reputation falls fast and recovers slowly; attacks produce what their papers describe."""

import pytest
import torch
from federation.errors import RobustnessError
from federation.robust import ReputationBook
from federation.robust.attacks import alie, alie_z, craft, ipm, label_flip, scaling, sign_flip


def test_when_a_client_is_flagged_twice__its_reputation_drops_below_the_seed_threshold():
    book = ReputationBook()
    book.record("evil", True)
    assert book.score("evil") == pytest.approx(0.5)
    book.record("evil", True)
    assert book.score("evil") < 0.3
    assert book.filter(["good", "evil"], 0.3) == ["good"]


def test_when_a_repeat_offender_turns_clean__it_recovers_much_slower_than_it_fell():
    book = ReputationBook()
    for _ in range(3):
        book.record("x", True)
    low = book.score("x")
    rounds = 0
    while book.score("x") < 0.9:
        book.record("x", False)
        rounds += 1
    assert low == pytest.approx(0.125)
    assert rounds >= 15  # fell in 3 rounds
    assert book.flags("x") == 3


def test_when_a_client_is_honest__it_keeps_full_reputation_and_full_weight():
    book = ReputationBook()
    for _ in range(5):
        book.record("good", False)
    book.record("bad", True)
    assert book.weights(["good", "bad", "new"]) == [1.0, 0.5, 1.0]
    assert book.updates == 6


def test_when_the_book_is_saved_and_restored__scores_and_counters_survive():
    book = ReputationBook(alpha_bad=0.4, alpha_good=0.05)
    book.record("a", True)
    book.record("b", False)
    back = ReputationBook.from_dict(book.to_dict())
    assert back.to_dict() == book.to_dict()
    with pytest.raises(RobustnessError):
        ReputationBook.from_dict({"version": 1})
    with pytest.raises(RobustnessError):
        ReputationBook(alpha_bad=0.0)


def test_when_alie_is_computed__z_matches_baruch_et_al_and_the_update_is_mean_minus_z_std():
    # Baruch et al. 2019: n = 50, f = 12 -> s = 14, z = Phi^-1(36/50) ~ 0.583
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    honest = [{"w": torch.tensor([1.0, 10.0])}, {"w": torch.tensor([3.0, 10.0])}]
    out = alie(honest, n_total=3, n_byzantine=1, z=1.0)["w"]
    torch.testing.assert_close(out, torch.tensor([2.0 - 2**0.5, 10.0]))


def test_when_ipm_sign_flip_and_scaling_run__they_produce_the_expected_vectors():
    honest = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])}]
    torch.testing.assert_close(ipm(honest, 0.5)["w"], torch.tensor([-1.0, -1.5]))
    torch.testing.assert_close(sign_flip(honest[0])["w"], torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(scaling(honest[0], 3)["w"], torch.tensor([3.0, 6.0]))
    with pytest.raises(RobustnessError):
        craft("backdoor", honest[:1], honest[1:], 2)


def test_when_labels_are_flipped__rul_is_reversed_and_binary_labels_swap():
    torch.testing.assert_close(
        label_flip(torch.tensor([0.0, 25.0, 125.0]), 125.0), torch.tensor([125.0, 100.0, 0.0])
    )
    assert label_flip(torch.tensor([0, 1, 1])).tolist() == [1, 0, 0]
    with pytest.raises(RobustnessError):
        label_flip(torch.tensor([0, 2]))


def test_when_judge_has_a_book__clients_flagged_last_round_do_not_form_the_direction_centre():
    from federation.robust.detectors import TRUSTED_REPUTATION
    from federation.robust.pipeline import ScreeningPolicy, judge

    g = torch.Generator().manual_seed(11)
    base = torch.randn(64, generator=g)
    honest = [{"w": base + 1.5 * torch.randn(64, generator=g)} for _ in range(5)]
    ups = [{"w": -honest[0]["w"]}, {"w": -honest[1]["w"]}, *honest[2:]]
    ids = [f"c{i}" for i in range(5)]
    policy = ScreeningPolicy()
    fresh = judge(ups, ids, policy, ReputationBook())
    book = ReputationBook()
    book.record("c0", True)
    book.record("c1", True)
    assert book.score("c0") <= TRUSTED_REPUTATION < book.score("c2")
    after = judge(ups, ids, policy, book)
    assert after["c0"].scores["cosine"] < fresh["c0"].scores["cosine"]
    assert after.flagged_ids == ["c0", "c1"]
