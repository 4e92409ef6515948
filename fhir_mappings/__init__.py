"""Trial protocols as data: FHIR resources plus one small protocol file per trial."""

from pathlib import Path

MAPPINGS_DIR = Path(__file__).parent
DEFAULT_PROTOCOL = MAPPINGS_DIR / "cd19-cart-rr-ball" / "protocol.toml"
UNIT_ALIASES = MAPPINGS_DIR / "unit-aliases.toml"


def protocol_files(base: Path = MAPPINGS_DIR) -> list[Path]:
    """Every ``protocol.toml`` one folder below ``base``: each such folder is a protocol."""
    return sorted(base.glob("*/protocol.toml"))
