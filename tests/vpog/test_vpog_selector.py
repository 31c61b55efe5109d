"""Invariants of VPOG's positive / negative template selection (fresnel.vpog.selector)."""

from __future__ import annotations

import math

import pytest
import torch

from fresnel.vpog.geometry import (
    in_plane_rotation,
    look_at_origin,
    nearest_template,
    out_of_plane_angle,
    template_poses,
    viewing_direction,
)
from fresnel.vpog.selector import Selection, TemplateSelector

F64 = torch.float64
TEMPLATES = template_poses(1)[:, :3, :3]  # 162 templates, about 16 degrees apart


def random_rotations(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=generator, dtype=F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return q * torch.det(q)[..., None, None]


def angles_to(R_query: torch.Tensor, templates: torch.Tensor = TEMPLATES) -> torch.Tensor:
    return out_of_plane_angle(R_query, templates)


def assert_same(a: Selection, b: Selection) -> None:
    assert torch.equal(a.positives, b.positives) and torch.equal(a.negatives, b.negatives)
    assert a.reference == b.reference and a.fallback == b.fallback
    torch.testing.assert_close(a.d_ref, b.d_ref)


def test_nearest_mode_invariants_for_random_queries():
    selector = TemplateSelector(TEMPLATES, num_positive=4, num_negative=3)
    for query in random_rotations(20):
        selection = selector.select(query, rng=0)
        angles = angles_to(query)
        expected = torch.sort(angles, stable=True).indices[:4]
        assert torch.equal(selection.positives, expected)
        assert selection.positives.dtype == selection.negatives.dtype == torch.long
        assert len(selection.negatives) == 3 and len(set(selection.negatives.tolist())) == 3
        assert (angles[selection.negatives] >= math.pi / 2).all()
        assert not set(selection.positives.tolist()) & set(selection.negatives.tolist())
        assert not selection.fallback
        assert selection.reference == selection.positives[0] == nearest_template(query, TEMPLATES)


def test_d_ref_is_the_nearest_templates_unit_viewing_direction():
    selector = TemplateSelector(TEMPLATES)
    for query in random_rotations(10, seed=1):
        selection = selector.select(query, rng=1)
        assert selection.d_ref.shape == (3,)
        torch.testing.assert_close(
            selection.d_ref, viewing_direction(TEMPLATES[nearest_template(query, TEMPLATES)])
        )
        torch.testing.assert_close(selection.d_ref.norm(), torch.tensor(1.0, dtype=F64))


def test_selection_is_invariant_to_an_in_plane_rotation_of_the_query():
    selector = TemplateSelector(TEMPLATES, mode="random_within_range", positive_max_angle_deg=40)
    queries = random_rotations(10, seed=2)
    turned = in_plane_rotation(torch.linspace(-3.0, 3.0, 10, dtype=F64)) @ queries
    for seed, (query, query_turned) in enumerate(zip(queries, turned, strict=True)):
        assert_same(selector.select(query, rng=seed), selector.select(query_turned, rng=seed))


def test_selection_is_reproducible_for_a_seed_and_varies_with_it():
    selector = TemplateSelector(TEMPLATES, mode="random_within_range", positive_max_angle_deg=40)
    query = random_rotations(1, seed=3)[0]
    assert_same(selector.select(query, rng=7), selector.select(query, rng=7))
    generator_a = torch.Generator().manual_seed(7)
    generator_b = torch.Generator().manual_seed(7)
    assert_same(selector.select(query, rng=generator_a), selector.select(query, rng=generator_b))
    draws = {
        (tuple(s.positives.tolist()), tuple(s.negatives.tolist()))
        for s in (selector.select(query, rng=seed) for seed in range(8))
    }
    assert len(draws) == 8
    negatives = {tuple(selector.select(query, rng=seed).negatives.tolist()) for seed in range(8)}
    assert len(negatives) > 1


def test_the_selectors_own_generator_gives_a_reproducible_sequence():
    query = random_rotations(1, seed=4)[0]
    first, second = TemplateSelector(TEMPLATES, seed=5), TemplateSelector(TEMPLATES, seed=5)
    sequence_a = [first.select(query) for _ in range(3)]
    sequence_b = [second.select(query) for _ in range(3)]
    for a, b in zip(sequence_a, sequence_b, strict=True):
        assert_same(a, b)
    assert not torch.equal(sequence_a[0].negatives, sequence_a[1].negatives)


def test_random_within_range_draws_distinct_positives_within_range():
    selector = TemplateSelector(TEMPLATES, mode="random_within_range", positive_max_angle_deg=35)
    for seed, query in enumerate(random_rotations(20, seed=6)):
        selection = selector.select(query, rng=seed)
        angles = angles_to(query)
        positives = selection.positives
        assert len(set(positives.tolist())) == 4
        assert (angles[positives] <= math.radians(35)).all()
        assert (angles[selection.negatives] >= math.pi / 2).all()
        assert not set(positives.tolist()) & set(selection.negatives.tolist())
        assert torch.equal(positives, positives[torch.sort(angles[positives], stable=True).indices])


def test_random_within_range_fills_up_with_the_nearest_templates():
    # about 16 degrees between neighbours: 5 degrees around a template holds only that template
    selector = TemplateSelector(TEMPLATES, mode="random_within_range", positive_max_angle_deg=5)
    query = in_plane_rotation(0.4) @ TEMPLATES[17]
    selection = selector.select(query, rng=0)
    assert torch.equal(selection.positives, torch.sort(angles_to(query), stable=True).indices[:4])
    assert selection.positives[0] == selection.reference == 17


def six_axis_templates() -> torch.Tensor:
    axes = torch.tensor(
        [[0, 0, 1], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=F64
    )
    return look_at_origin(axes)


def test_negatives_fall_back_to_the_farthest_templates():
    templates = six_axis_templates()  # from the +z query: 0, 90, 90, 90, 90 and 180 degrees
    query = in_plane_rotation(1.0) @ templates[0]
    strict = TemplateSelector(templates, num_positive=1, num_negative=2, negative_min_angle_deg=120)
    selection = strict.select(query, rng=0)
    assert selection.fallback
    assert selection.positives.tolist() == [0]
    assert selection.negatives.tolist() == [1, 5]  # -z, then the lowest-index 90 degree one
    none_qualify = TemplateSelector(
        templates, num_positive=1, num_negative=3, negative_min_angle_deg=181
    )
    assert none_qualify.select(query, rng=0).negatives.tolist() == [1, 2, 5]


def test_no_fallback_when_enough_templates_qualify():
    templates = six_axis_templates()
    query = templates[0]
    selection = TemplateSelector(templates, num_positive=1, num_negative=5).select(query, rng=3)
    assert not selection.fallback
    assert selection.negatives.tolist() == [1, 2, 3, 4, 5]


def test_negatives_never_include_positives_even_in_fallback():
    templates = six_axis_templates()
    query = templates[0]
    selector = TemplateSelector(templates, num_positive=5, num_negative=1)
    selection = selector.select(query, rng=0)
    assert selection.positives.tolist() == [0, 1, 2, 3, 4]
    assert selection.negatives.tolist() == [5] and not selection.fallback
    selector = TemplateSelector(
        templates, num_positive=5, num_negative=1, negative_min_angle_deg=181
    )
    selection = selector.select(query, rng=0)
    assert selection.negatives.tolist() == [5] and selection.fallback


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_positive": 4, "num_negative": 3},  # 7 > 6 templates
        {"mode": "farthest"},
        {"mode": "random_within_range"},  # needs positive_max_angle_deg
        {"num_positive": 0},
    ],
)
def test_invalid_configurations_are_rejected(kwargs):
    with pytest.raises(ValueError):
        TemplateSelector(six_axis_templates(), **kwargs)


def test_float32_templates_and_numpy_input_are_accepted():
    templates = TEMPLATES.float().numpy()
    selection = TemplateSelector(templates).select(TEMPLATES[3].float(), rng=0)
    assert selection.reference == 3 and selection.d_ref.dtype == torch.float32
