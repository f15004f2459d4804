//! Fields a layer adds to a message head without going through its
//! `HeaderMap`: the forwarding fields of every upstream request and the
//! security fields of every HTTP/1 response. Inserting them into the map
//! cost a hash and an insertion each, and dropping them again, on every
//! request (12 % of an HTTP/1 request's instructions, issue 13); the two
//! HTTP/1 writers instead ask, field by field as they write the map,
//! whether one of ours replaces it, and then write ours from bytes.

use http::{HeaderMap, HeaderName};

use crate::base::framed::push_field;

/// Fields written after a message's own.
pub trait HeadFields: Send + Sync {
    /// Called with the name of each field of the message's map, in order,
    /// before it is written: `true` when one of ours replaces it or it is
    /// to be removed, so it is not written. `seen` is for the
    /// implementation to note what it needs to know of the map (which of
    /// the fields it adds only when absent are present).
    fn gives_way(&self, name: &HeaderName, seen: &mut u64) -> bool;

    /// Writes our fields as `name: value\r\n` lines. `headers` is the
    /// message's map, `seen` what [`HeadFields::gives_way`] noted in it.
    fn write(&self, headers: &HeaderMap, seen: u64, out: &mut Vec<u8>);
}

/// No fields: a message sent as its map says.
impl HeadFields for () {
    fn gives_way(&self, _: &HeaderName, _: &mut u64) -> bool {
        false
    }

    fn write(&self, _: &HeaderMap, _: u64, _: &mut Vec<u8>) {}
}

/// A response body that brings the fields its head is written with.
pub trait WithFields {
    fn head_fields(&self) -> &dyn HeadFields;
}

/// A map's fields that do not give way to `fields`, then `fields`' own, as
/// `name: value\r\n` lines: the order both HTTP/1 writers follow, less
/// their framing rules (what the tests and the benchmark compare with).
pub fn write_with(headers: &HeaderMap, fields: &dyn HeadFields, out: &mut Vec<u8>) {
    let mut seen = 0;
    for (name, value) in headers {
        if !fields.gives_way(name, &mut seen) {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    fields.write(headers, seen, out);
}
