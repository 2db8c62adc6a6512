"""The one base of every section a user writes (a spec's, a campaign file's): strict, so a typo is an error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A section of a spec or campaign file: an unknown key is refused (a typo must not fall back to a default),
    and a default is checked as a value written out would be."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
