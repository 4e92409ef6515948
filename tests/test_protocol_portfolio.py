"""Several protocols at once; typed rule parameters and explicit structure checked at load."""

from __future__ import annotations

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from fhir_mappings import DEFAULT_PROTOCOL, protocol_files
from service.cli import app
from service.clinical.rules.params import LabThresholdParams
from service.portfolio import Portfolio, load_portfolio
from service.protocol import ProtocolError, load_protocol
from service.settings import get_settings
from tests.builders import bundle, lab, patient
from tests.protocol_copies import (
    SECOND_CANONICAL,
    SECOND_ID,
    SECOND_NCT,
    SEED_DIR,
    copy_seed,
    edit_json,
    edit_toml,
    second_protocol,
)

runner = CliRunner()
SEED_CANONICAL = "https://fhir.cart-eligibility.example.org/ResearchStudy/cd19-cart-rr-ball"


@pytest.fixture
def two(tmp_path):
    return load_portfolio([SEED_DIR, second_protocol(tmp_path / "second")])


def test_every_folder_with_a_protocol_toml_is_a_protocol(tmp_path):
    copy_seed(tmp_path / "a")
    second_protocol(tmp_path / "b")
    (tmp_path / "shared").mkdir()  # no protocol.toml: not a protocol
    assert [p.parent.name for p in protocol_files(tmp_path)] == ["a", "b"]
    assert [p.id for p in load_portfolio(base=tmp_path)] == ["cd19-cart-rr-ball", SECOND_ID]


def test_default_portfolio_is_the_seed_alone():
    portfolio = load_portfolio()
    assert [p.id for p in portfolio] == ["cd19-cart-rr-ball"]
    assert portfolio.protocols[0].registry_numbers == ()  # a site's own trial: none invented


def test_lookup_by_id_canonical_and_registry_number(two):
    second = two.get(SECOND_ID)
    assert two.get(SECOND_CANONICAL) is second
    assert two.get(f"{SECOND_CANONICAL}|1.0.0") is second
    assert two.get(SECOND_NCT) is second
    assert second.registry_numbers == (SECOND_NCT,)
    assert two.get(SEED_CANONICAL).id == "cd19-cart-rr-ball"
    with pytest.raises(KeyError, match="NCT99999999"):
        two.get("NCT99999999")


def test_select_keeps_order_and_dedupes(two):
    assert [p.id for p in two.select([])] == ["cd19-cart-rr-ball", SECOND_ID]
    assert [p.id for p in two.select([SECOND_NCT, "cd19-cart-rr-ball", SECOND_ID])] == [
        SECOND_ID,
        "cd19-cart-rr-ball",
    ]


def test_two_protocols_with_the_same_canonical_are_refused(tmp_path):
    copy_seed(tmp_path / "a")
    copy_seed(tmp_path / "b")
    edit_toml(tmp_path / "b", 'id = "cd19-cart-rr-ball"', 'id = "other"')
    with pytest.raises(ProtocolError, match="also names"):
        load_portfolio(base=tmp_path)
    assert len(Portfolio([load_protocol(tmp_path / "a")])) == 1


def test_misspelt_key_is_a_load_error_naming_file_criterion_and_key(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(folder, 'attestation_item = "I11"', 'attestation_itme = "I11"')
    with pytest.raises(ProtocolError) as err:
        load_protocol(folder)
    message = str(err.value)
    assert str(folder / "protocol.toml") in message
    assert "[criteria.I11]" in message and "'attestation_itme'" in message


def test_unknown_valueset_is_a_load_error(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(folder, 'observation_valueset = "platelets"', 'observation_valueset = "platelet"')
    with pytest.raises(ProtocolError, match=r"\[criteria.I7-platelets\].*'platelet'"):
        load_protocol(folder)


def test_optional_valueset_reference_is_checked_too(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(
        folder,
        'context_observation_valueset = "lvef-any-method"',
        'context_observation_valueset = "lvef-any"',
    )
    with pytest.raises(ProtocolError, match=r"I8.*context_observation_valueset.*'lvef-any'"):
        load_protocol(folder)


def test_unknown_attestation_item_rule_and_kind_are_load_errors(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(folder, 'attestation_item = "I9"', 'attestation_item = "I99"')
    with pytest.raises(ProtocolError, match=r"I9.*no item 'I99'"):
        load_protocol(folder)
    folder = copy_seed(tmp_path / "q")
    edit_toml(folder, 'rule = "survival"', 'rule = "survivall"')
    with pytest.raises(ProtocolError, match=r"\[criteria.I9\] key 'rule'"):
        load_protocol(folder)
    folder = copy_seed(tmp_path / "r")
    edit_toml(folder, 'title = "Agrees to contraception', 'kind = "exclusio"\ntitle = "Agrees')
    with pytest.raises(ProtocolError, match=r"I11.*'kind'"):
        load_protocol(folder)


def test_wrong_type_is_a_load_error(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(folder, 'comparator = ">="', 'comparator = "=>"')
    with pytest.raises(ProtocolError, match=r"I7-anc.*'comparator'"):
        load_protocol(folder)


def test_kind_must_agree_with_the_criteria_codesystem(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(folder, 'title = "Informed consent signed"', 'kind = "exclusion"\ntitle = "X"')
    with pytest.raises(ProtocolError, match=r"I12.*'kind'.*CodeSystem says 'inclusion'"):
        load_protocol(folder)


def test_typed_parameters_are_exposed_beside_the_raw_dict():
    protocol = load_protocol(DEFAULT_PROTOCOL)
    anc = protocol.criteria["I7-anc"]
    assert isinstance(anc.typed, LabThresholdParams)
    assert anc.typed.threshold.unit == "10*9/L" and anc.typed.window_days == 14
    assert anc.params["observation_valueset"] == "anc"  # rule bodies read this, unchanged
    assert {c.kind for c in protocol.criteria.values()} == {"inclusion"}


def test_membership_comes_from_the_members_list_not_the_code(tmp_path):
    folder = copy_seed(tmp_path / "p")
    # A top-level code with a hyphen is still top-level; a member is one because it is listed.
    edit_toml(folder, "[criteria.I12]", "[criteria.I-12]")
    edit_json(
        folder / "CodeSystem-cd19-cart-rr-ball-criteria.json",
        lambda cs: [c.update(code="I-12") for c in cs["concept"] if c["code"] == "I12"],
    )
    protocol = load_protocol(folder)
    top = [c.code for c in protocol.top_level]
    assert top[-1] == "I-12" and "I6" in top and "I6-alt" not in top
    assert protocol.criteria["I6-alt"].member_of == "I6"
    assert not protocol.criteria["I-12"].is_member


def test_shared_valueset_by_canonical(tmp_path):
    folder = copy_seed(tmp_path / "p")
    shared = tmp_path / "shared"
    shared.mkdir()
    (folder / "ValueSet-platelets.json").rename(shared / "ValueSet-platelets.json")
    url = orjson.loads((shared / "ValueSet-platelets.json").read_bytes())["url"]
    edit_toml(folder, 'observation_valueset = "platelets"', f'observation_valueset = "{url}"')
    protocol = load_protocol(folder)
    assert protocol.valueset(url).codes  # resolved from ../shared, keyed by its canonical
    (shared / "ValueSet-platelets.json").unlink()
    with pytest.raises(ProtocolError, match="shared folders"):
        load_protocol(folder)


def test_evaluate_study_selects_protocols(tmp_path, monkeypatch):
    second_protocol(tmp_path / "second")
    monkeypatch.setenv(
        "ELIGIBILITY_PROTOCOL_DIRS",
        orjson.dumps([str(SEED_DIR), str(tmp_path / "second")]).decode(),
    )
    get_settings.cache_clear()
    try:
        f = tmp_path / "in.json"
        f.write_bytes(orjson.dumps(bundle(patient(), lab("777-3", 12, "10*9/L"))))
        args = ["evaluate", "--bundle", str(f), "--as-of", "2026-11-20"]
        one = runner.invoke(app, [*args, "--study", SECOND_NCT])
        assert one.exit_code == 0, one.output
        out = orjson.loads(one.stdout)
        assert out["entry"][0]["resource"]["resourceType"] != "Bundle"  # one result, as today
        assert SECOND_CANONICAL in one.stdout and SEED_CANONICAL not in one.stdout
        both = runner.invoke(app, args)
        assert both.exit_code == 0, both.output
        combined = orjson.loads(both.stdout)
        Bundle.model_validate(combined)
        # the API's shape: one flat Bundle, each study's ResearchSubject naming its study
        results = [e["resource"] for e in combined["entry"]]
        assert "Bundle" not in {r["resourceType"] for r in results}
        subjects = [r for r in results if r["resourceType"] == "ResearchSubject"]
        studies = [s["study"]["reference"] for s in subjects]
        assert len(subjects) == 2 and len(set(studies)) == 2
        assert SEED_CANONICAL in both.stdout and SECOND_CANONICAL in both.stdout
        unknown = runner.invoke(app, [*args, "--study", "NCT99999999"])
        assert unknown.exit_code == 2 and "NCT99999999" in unknown.stderr
    finally:
        get_settings.cache_clear()


def test_evaluate_default_with_one_protocol_is_todays_output(tmp_path):
    f = tmp_path / "in.json"
    f.write_bytes(orjson.dumps(bundle(patient(), lab("777-3", 12, "10*9/L"))))
    args = ["evaluate", "--bundle", str(f), "--as-of", "2026-11-20", "--format", "summary"]
    plain = runner.invoke(app, args)
    chosen = runner.invoke(app, [*args, "--study", "cd19-cart-rr-ball"])
    assert plain.exit_code == chosen.exit_code == 0
    assert plain.stdout == chosen.stdout and "I7-platelets" in plain.stdout
