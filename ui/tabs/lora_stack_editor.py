"""The LoRA stack editor moved to ``ui.lora_editor`` (shared by every tab); this name stays for old imports."""

from ..lora_editor import (  # noqa: F401
    _weight,
    add,
    add_source,
    entries_of,
    entry_text,
    folder_choices,
    move,
    remove,
    spec_from_source,
    specs,
    stack_editor,
    update,
)
