"""The privacy accountant agrees with dp-accounting and enforces its budget."""

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from federation.errors import PrivacyBudgetExceeded, PrivacyError
from federation.privacy import PrivacyAccountant, noise_multiplier_for
from federation.privacy.accountant import PLD_DISCRETIZATION


def _library_epsilon(accountant, z, q, rounds, delta):
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("z,q,rounds", [(1.0, 1.0, 5), (1.3, 0.2, 40), (0.8, 0.05, 100)])
def test_when_rounds_are_spent__rdp_epsilon_equals_the_librarys_own_computation(z, q, rounds):
    acct = PrivacyAccountant(z, q, 1e-5)
    expected = _library_epsilon(rdp.RdpAccountant(), z, q, rounds, 1e-5)
    assert acct.epsilon_after(rounds) == pytest.approx(expected, rel=1e-12)


def test_when_pld_is_chosen__epsilon_equals_the_pld_library_and_is_tighter_than_rdp():
    z, q, rounds = 1.0, 0.1, 20
    acct = PrivacyAccountant(z, q, 1e-5, method="pld")
    lib = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    expected = _library_epsilon(lib, z, q, rounds, 1e-5)
    assert acct.epsilon_after(rounds) == pytest.approx(expected, rel=1e-12)
    assert acct.epsilon_after(rounds) < PrivacyAccountant(z, q, 1e-5).epsilon_after(rounds)


def test_when_rounds_are_spent_one_by_one__epsilon_grows_and_matches_epsilon_after():
    acct = PrivacyAccountant(1.1, 0.5, 1e-5)
    seen = [acct.spend_round() for _ in range(4)]
    assert seen == sorted(seen) and len(set(seen)) == 4
    assert acct.rounds == 4 and acct.epsilon == pytest.approx(acct.epsilon_after(4))
    assert acct.history == seen


def test_when_the_next_round_would_exceed_max_epsilon__it_is_refused_and_nothing_is_spent():
    probe = PrivacyAccountant(1.0, 1.0, 1e-5)
    budget = (probe.epsilon_after(2) + probe.epsilon_after(3)) / 2
    acct = PrivacyAccountant(1.0, 1.0, 1e-5, max_epsilon=budget)
    acct.spend_round()
    acct.spend_round()
    before = acct.epsilon
    with pytest.raises(PrivacyBudgetExceeded):
        acct.spend_round()
    assert acct.rounds == 2 and acct.epsilon == before <= budget
    assert acct.remaining_rounds() == 0
    assert issubclass(PrivacyBudgetExceeded, PrivacyError)


def test_when_a_budget_is_set__remaining_rounds_counts_what_still_fits():
    acct = PrivacyAccountant(2.0, 0.1, 1e-5, max_epsilon=1.0)
    left = acct.remaining_rounds()
    assert left is not None and left > 0
    assert acct.epsilon_after(left) <= 1.0 < acct.epsilon_after(left + 1)


def test_when_the_ledger_is_saved_and_restored__rounds_and_epsilon_survive():
    acct = PrivacyAccountant(1.2, 0.3, 1e-6, max_epsilon=50.0, method="rdp")
    for _ in range(3):
        acct.spend_round()
    back = PrivacyAccountant.from_dict(acct.to_dict())
    assert back.to_dict() == acct.to_dict()
    assert back.spend_round() == pytest.approx(acct.epsilon_after(4))


def test_when_a_ledger_is_corrupt__restoring_raises_privacy_error():
    good = PrivacyAccountant(1.0).to_dict()
    for bad in ({}, {**good, "version": 99}, {**good, "rounds": -1}, {**good, "delta": 2.0}):
        with pytest.raises(PrivacyError):
            PrivacyAccountant.from_dict(bad)


def test_when_there_is_no_noise__epsilon_is_infinite_and_any_budget_refuses():
    acct = PrivacyAccountant(0.0, 1.0, 1e-5, max_epsilon=100.0)
    assert math.isinf(acct.epsilon_after(1))
    with pytest.raises(PrivacyBudgetExceeded):
        acct.spend_round()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": -1.0},
        {"noise_multiplier": 1.0, "sampling_rate": 0.0},
        {"noise_multiplier": 1.0, "sampling_rate": 1.5},
        {"noise_multiplier": 1.0, "delta": 0.0},
        {"noise_multiplier": 1.0, "max_epsilon": -2.0},
        {"noise_multiplier": 1.0, "method": "moments"},
    ],
)
def test_when_accountant_arguments_are_invalid__it_raises_privacy_error(kwargs):
    with pytest.raises(PrivacyError):
        PrivacyAccountant(**kwargs)


@pytest.mark.parametrize("method", ["rdp", "pld"])
def test_when_planning_a_budget__the_calibrated_noise_meets_the_target_epsilon(method):
    z = noise_multiplier_for(3.0, rounds=20, sampling_rate=0.5, delta=1e-5, method=method)
    eps = PrivacyAccountant(z, 0.5, 1e-5, method=method).epsilon_after(20)
    assert eps <= 3.0 and eps == pytest.approx(3.0, rel=0.01)


def test_when_the_planning_target_is_invalid__it_raises_privacy_error():
    with pytest.raises(PrivacyError):
        noise_multiplier_for(0.0, 10)
    with pytest.raises(PrivacyError):
        noise_multiplier_for(1.0, 0)
