//! adflow pipelines (work in progress).
