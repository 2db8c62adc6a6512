"""Who a run is, as one typed value built once per run: the key its records are found by and what its numbers may
be called. The sinks write a run's identity tags from it; the reports read those tags back through DataTag, never
through a pattern of their own. Plain data: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.data_tag import DataTag


@dataclass(frozen=True)
class RunIdentity:
    spec_hash: str  # the resolved spec on this data (RunSpec.spec_hash): a run's MLflow run, checkpoint and record
    data_id: str  # the data file's identity (its name and content hash)
    data: DataTag  # what it trains and is tested on
    budget: float

    def tags(self) -> dict[str, str]:
        """The identity as MLflow tags: `official_test_set` true is CIFAR-10 test error (all 50k images trained, the
        official test set, budget 1.0); `tested_on_official` and `full_training_data` say each part alone."""
        return {"spec_hash": self.spec_hash, "budget": f"{self.budget:g}", "data": str(self.data),
                "data_id": self.data_id,
                "official_test_set": str(self.data.cifar10_test_error(self.budget)).lower(),
                "tested_on_official": str(self.data.official).lower(),
                "full_training_data": str(self.data.full_training_data).lower()}
