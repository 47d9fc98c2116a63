//! A replicated configuration store after Cloudflare's Quicksilver.
//!
//! (Being built: see issue #7.)
#![warn(missing_docs)]
