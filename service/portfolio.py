"""Several trial protocols at once, looked up by id, canonical url or registry number.

Each protocol folder stays self-contained (its own ResearchStudy, criteria CodeSystem,
ValueSets and Questionnaire); the portfolio only finds them and answers "which protocol
does this name mean". Every protocol is checked as strictly as a single one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from fhir_mappings import DEFAULT_PROTOCOL, MAPPINGS_DIR, protocol_files
from service.protocol import Protocol, ProtocolError, load_protocol


class Portfolio:
    """The loaded protocols, in folder order, with one index over all their names."""

    def __init__(self, protocols: Iterable[Protocol]) -> None:
        self.protocols: list[Protocol] = list(protocols)
        self._by_name: dict[str, Protocol] = {}
        for p in self.protocols:
            for name in (p.id, p.canonical, p.versioned_canonical, *p.registry_numbers):
                other = self._by_name.setdefault(name, p)
                if other is not p:
                    raise ProtocolError(
                        f"{p.directory}: {name!r} also names the protocol in {other.directory}"
                    )

    def __iter__(self) -> Iterator[Protocol]:
        return iter(self.protocols)

    def __len__(self) -> int:
        return len(self.protocols)

    def get(self, name: str) -> Protocol:
        """The protocol with this id, ResearchStudy canonical (optionally |version) or
        ClinicalTrials.gov registry number; KeyError naming the known ones otherwise."""
        found = self._by_name.get(name.strip())
        if found is None:
            known = ", ".join(p.id for p in self.protocols)
            raise KeyError(f"no protocol {name!r} (loaded: {known})")
        return found

    def select(self, names: Iterable[str]) -> list[Protocol]:
        """The named protocols in the order asked, each once; every protocol when none named."""
        names = list(names)
        if not names:
            return list(self.protocols)
        chosen: dict[str, Protocol] = {}
        for name in names:
            p = self.get(name)
            chosen.setdefault(p.id, p)
        return list(chosen.values())


def _protocol_file(path: Path) -> Path:
    return path / "protocol.toml" if path.is_dir() else path


def load_portfolio(paths: Iterable[Path] | None = None, base: Path = MAPPINGS_DIR) -> Portfolio:
    """Load the given protocol folders, or every protocol folder under ``base``."""
    files = [_protocol_file(Path(p)) for p in paths] if paths else protocol_files(base)
    if not files:
        raise ProtocolError(f"no protocol.toml in any folder under {base}")
    return Portfolio(load_protocol(f) for f in files)


def configured_paths(protocol_dirs: Iterable[Path], protocol_path: Path) -> list[Path] | None:
    """The protocol folders the settings name: ``protocol_dirs``; else an explicitly set
    ``protocol_path`` alone; else None (every folder under fhir_mappings/)."""
    paths = list(protocol_dirs)
    if paths:
        return paths
    if Path(protocol_path) != DEFAULT_PROTOCOL:
        return [Path(protocol_path)]
    return None
