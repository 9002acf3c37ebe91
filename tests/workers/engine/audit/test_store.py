"""Shadow keys: one key per distinct set of inputs; the in-memory store keeps the first save."""

from __future__ import annotations

import numpy as np
import pytest

from workers.engine.audit.store import MemoryShadowStore, ShadowSpec, indices_digest

BASE_MATERIAL = {
    "dataset": "a" * 64,
    "architecture": "mlp",
    "arch_config": {"hidden": [32]},
    "recipe": {"epochs": 5, "lr": 0.1},
    "subset": indices_digest(np.arange(10)),
    "seed": 3,
    "trainer": "vectorised/1",
}


def test_equal_inputs_give_equal_keys_in_any_order() -> None:
    reordered = dict(reversed(list(BASE_MATERIAL.items())))
    assert ShadowSpec("base", BASE_MATERIAL).key == ShadowSpec("base", reordered).key
    assert len(ShadowSpec("base", BASE_MATERIAL).key) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"dataset": "b" * 64},
        {"architecture": "small_cnn"},
        {"arch_config": {"hidden": [33]}},
        {"recipe": {"epochs": 6, "lr": 0.1}},
        {"subset": indices_digest(np.arange(11))},
        {"seed": 4},
        {"trainer": "vectorised/2"},
        {"method_params": {"lr": 0.01}},
    ],
)
def test_any_changed_input_gives_another_key(change: dict[str, object]) -> None:
    assert ShadowSpec("base", BASE_MATERIAL).key != ShadowSpec("base", {**BASE_MATERIAL, **change}).key


def test_role_is_part_of_the_key() -> None:
    assert ShadowSpec("base", BASE_MATERIAL).key != ShadowSpec("retrain", BASE_MATERIAL).key


def test_indices_digest_ignores_order_and_dtype_but_not_content() -> None:
    assert indices_digest(np.array([3, 1, 2], dtype=np.int32)) == indices_digest(np.array([1, 2, 3]))
    assert indices_digest(np.array([1, 2, 3])) != indices_digest(np.array([1, 2, 4]))


def test_memory_store_fetches_only_present_keys_and_keeps_the_first_save() -> None:
    store = MemoryShadowStore()
    spec = ShadowSpec("base", BASE_MATERIAL)
    first = {"w": np.ones(2, dtype=np.float32)}
    store.save(spec, first)
    store.save(spec, {"w": np.zeros(2, dtype=np.float32)})
    fetched = store.fetch([spec.key, "missing"])
    assert list(fetched) == [spec.key]
    np.testing.assert_array_equal(fetched[spec.key]["w"], first["w"])
