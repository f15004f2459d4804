//! Upstreams: the pooled HTTP/1.1 connections to each server (with name
//! resolution) and the request body as it is sent to them.

pub mod body;
pub mod h1;
pub mod pool;
pub mod resolver;
