import json
import random
from pathlib import Path

import pytest

from autocomp.errors import UserError
from autocomp.space import Candidate, get_space, list_spaces, load_space

SPACE_YAML = Path(__file__).resolve().parents[1] / "search_spaces" / "mnist-mbv2.yaml"


def test_default_space_is_listed_and_loads():
    assert "mnist-mbv2" in list_spaces()
    s = get_space()
    assert s.name == "mnist-mbv2" and s.compression.precision == ["fp32", "fp16", "int8"]


def test_candidate_json_round_trip_is_exact_and_id_stable():
    s = get_space()
    rng = random.Random(7)
    for _ in range(50):
        c = s.sample(rng)
        text = c.to_json()
        back = Candidate.from_json(text)
        assert back == c and back.to_json() == text and back.id == c.id
        s.validate_candidate(back)
    # the id depends on content only
    a, b = s.sample(random.Random(1)), s.sample(random.Random(1))
    assert a.id == b.id and a is not b


def test_candidate_is_frozen_and_hashable():
    c = get_space().largest()
    with pytest.raises(Exception):
        c.stem_width = 1  # type: ignore[misc]
    assert len({c, Candidate.from_json(c.to_json())}) == 1


def test_same_seed_same_candidates_and_mutation_stays_inside():
    s = get_space()
    a = [s.sample(random.Random(3)).id for _ in range(3)]
    assert len(set(a)) == 1
    rng = random.Random(0)
    pop = [s.sample(rng) for _ in range(20)]
    for i in range(200):
        child = s.crossover(pop[i % 20], pop[(i * 7) % 20], rng)
        child = s.mutate(child, rng, prob=0.5)
        s.validate_candidate(child)


def test_encoding_has_fixed_length():
    s = get_space()
    rng = random.Random(0)
    lengths = {len(s.encode(s.sample(rng))) for _ in range(30)}
    assert len(lengths) == 1


def test_candidate_outside_space_is_rejected_naming_the_gene():
    s = get_space()
    d = json.loads(s.largest().to_json())
    d["stages"][1]["blocks"][0]["kernel"] = 4
    with pytest.raises(UserError, match=r"stages\[1\]\.blocks\[0\]\.kernel"):
        s.validate_candidate(Candidate.from_dict(d))


def test_malformed_candidate_json():
    with pytest.raises(UserError, match="candidate"):
        Candidate.from_json('{"space": "x"}')
    with pytest.raises(UserError, match="not valid JSON"):
        Candidate.from_json("{")


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["stages"][0].update(kernel=[3, 4]), r"stages\[0\]\.kernel"),
        (lambda d: d["stages"][2].update(stride=3), r"stages\[2\]\.stride"),
        (lambda d: d["compression"].update(keep_ratio=[1.0, 1.5]), r"compression\.keep_ratio"),
        (lambda d: d["compression"].update(precision=["fp32", "int4"]), r"compression\.precision"),
        (lambda d: d.pop("num_classes"), r"num_classes"),
        (lambda d: d.update(colour="red"), r"colour"),
        (lambda d: d["stages"][1].update(depth=[]), r"stages\[1\]\.depth"),
    ],
)
def test_invalid_yaml_names_the_field(tmp_path, edit, field):
    import yaml

    d = yaml.safe_load(SPACE_YAML.read_text())
    edit(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(UserError, match=field):
        load_space(p)


def test_unparseable_yaml_and_unknown_space(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        get_space(p)
    with pytest.raises(UserError, match="unknown search space"):
        get_space("no-such-space")
