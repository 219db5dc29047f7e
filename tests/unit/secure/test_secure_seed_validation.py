"""The validate_security_configuration example of the communication layer's guide, verbatim, reports everything 'working'."""

# ruff: noqa: F841  (the seed's code assigns `decrypted` without using it)

import torch
from federation.communication.secure_syft_client import SecurePySyftCommunicationManager


# --- copied verbatim from the seed (its troubleshooting section, "Security Configuration Issues") ----------------------
# fmt: off
def validate_security_configuration(secure_comm):
    """Validate security configuration and identify issues."""

    validation_results = {
        'encryption': 'unknown',
        'differential_privacy': 'unknown',
        'byzantine_tolerance': 'unknown',
        'issues': [],
        'recommendations': []
    }

    # Test encryption functionality
    try:
        test_model = {'test_param': torch.randn(10, 10)}
        encrypted = secure_comm.encrypt_model_update(test_model)
        decrypted = secure_comm.decrypt_model_update(encrypted)
        validation_results['encryption'] = 'working'
    except Exception as e:
        validation_results['encryption'] = 'failed'
        validation_results['issues'].append(f"Encryption test failed: {e}")
        validation_results['recommendations'].append("Check encryption key configuration")

    # Test differential privacy
    if secure_comm.differential_privacy_enabled:
        try:
            test_model = {'test_param': torch.randn(5, 5)}
            noisy_model = secure_comm.apply_differential_privacy(test_model)
            # Check that noise was actually added
            if torch.equal(test_model['test_param'], noisy_model['test_param']):
                validation_results['differential_privacy'] = 'not_working'
                validation_results['issues'].append("Differential privacy noise not applied")
            else:
                validation_results['differential_privacy'] = 'working'
        except Exception as e:
            validation_results['differential_privacy'] = 'failed'
            validation_results['issues'].append(f"Differential privacy test failed: {e}")
    else:
        validation_results['differential_privacy'] = 'disabled'

    # Test Byzantine fault tolerance
    if secure_comm.byzantine_fault_tolerance_enabled:
        try:
            # Create test updates with one obvious outlier
            test_updates = [
                {'datasite_id': 'normal_1', 'model_update': {'param': torch.randn(3, 3)}},
                {'datasite_id': 'normal_2', 'model_update': {'param': torch.randn(3, 3)}},
                {'datasite_id': 'outlier', 'model_update': {'param': torch.randn(3, 3) * 100}}  # Obvious outlier
            ]

            filtered_updates, byzantine_clients = secure_comm.detect_byzantine_clients(test_updates)

            if 'outlier' in byzantine_clients:
                validation_results['byzantine_tolerance'] = 'working'
            else:
                validation_results['byzantine_tolerance'] = 'not_sensitive'
                validation_results['issues'].append("Byzantine detection may not be sensitive enough")
                validation_results['recommendations'].append("Consider adjusting BFT threshold")

        except Exception as e:
            validation_results['byzantine_tolerance'] = 'failed'
            validation_results['issues'].append(f"Byzantine tolerance test failed: {e}")
    else:
        validation_results['byzantine_tolerance'] = 'disabled'

    return validation_results
# fmt: on
# --- end of the seed's code ---------------------------------------------------------------


def test_when_the_seeds_validation_runs_over_many_seeds__all_three_layers_report_working():
    # fmt: off
    secure_comm = SecurePySyftCommunicationManager(
        encryption_key="production_federated_learning_2025",  # AES encryption key
        enable_dp=True,                                       # Differential privacy
        noise_multiplier=1.0,                                # DP noise level
        enable_bft=True,                                     # Byzantine fault tolerance
        bft_threshold=2.0,                                   # Outlier detection threshold
        min_clients=3                                        # Minimum clients for BFT
    )
    # fmt: on
    for seed in range(200):
        torch.manual_seed(seed)
        results = validate_security_configuration(secure_comm)
        assert results["encryption"] == "working", (seed, results["issues"])
        assert results["differential_privacy"] == "working", (seed, results["issues"])
        assert results["byzantine_tolerance"] == "working", (seed, results["issues"])
        assert results["issues"] == []
    metrics = secure_comm.get_security_metrics()["security_metrics"]
    assert metrics["encrypted_messages"] == 200 and metrics["security_violations"] == 0
    assert metrics["dp_noise_applications"] == 200
    assert metrics["byzantine_attacks_detected"] >= 200


def test_when_layers_are_disabled__the_seeds_validation_says_disabled(make_manager):
    results = validate_security_configuration(make_manager(enable_dp=False, enable_bft=False))
    assert results["encryption"] == "working"
    assert results["differential_privacy"] == "disabled"
    assert results["byzantine_tolerance"] == "disabled"
