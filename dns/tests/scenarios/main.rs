//! Scenario tests: the resolver against a scripted in-process hierarchy of authoritative
//! servers on 127.0.0.x, one scenario per behaviour. One binary, many modules (link time).

mod common;

mod budget;
mod chains;
mod delegation;
mod minimisation;
mod negative;
mod sharing;
mod spoofing;
