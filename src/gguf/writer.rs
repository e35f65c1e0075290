//! GGUF writing (placeholder, filled in by the export step).
