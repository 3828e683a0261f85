//! The cluster's work queue (filled in below).
