//! Content-defined chunking (`spec/files.md` § Chunking). Filled in by the files work.
