//! Normative path rules (`spec/files.md` § Paths). Filled in by the files work.
