"""Export: the student in the formats people load (see README.md)."""
