//! The job-file language (placeholder).
