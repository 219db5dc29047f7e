"""The connector reads a round's model version once, however many datasites train from it."""

import torch


def test_when_many_datasites_train_from_one_model_version__the_connector_reads_it_once():
    from services.connector.handlers import ConnectorLogic, model_key

    class CountingStore:
        def __init__(self) -> None:
            self.reads = 0
            self.values = {
                model_key("c1", 3): {"w": torch.ones(3)},
                model_key("c1", 4): {"w": torch.zeros(3)},
            }

        def read(self, key):
            self.reads += 1
            return self.values.get(key)

    from federation.datasite_registry import DatasiteRegistry

    logic = ConnectorLogic(comm_manager=None, registry=DatasiteRegistry({}))
    logic.store = CountingStore()
    for _ in range(10):
        got = logic.global_model({"campaign_id": "c1", "model_version": 3})
        assert torch.equal(got["w"], torch.ones(3))
    assert logic.store.reads == 1
    assert torch.equal(
        logic.global_model({"campaign_id": "c1", "model_version": 4})["w"], torch.zeros(3)
    )
    got["extra"] = torch.ones(1)  # callers get their own dict
    assert "extra" not in logic.global_model({"campaign_id": "c1", "model_version": 3})
    assert logic.store.reads == 2
