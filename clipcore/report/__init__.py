"""The report stage: one self-contained HTML report and its Markdown summary."""
