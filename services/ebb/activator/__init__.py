"""The activator: holds requests for revisions without ready instances, wakes them, forwards."""
