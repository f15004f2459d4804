//! The Content-Length rule both HTTP/1 sides apply (RFC 9110 §8.6): every
//! field value is a list of decimal lengths, all of which must be the
//! same; anything else is no length at all. The client-facing head check
//! (`conn::framing`) refuses such a request; the upstream side
//! (`upstream::h1`) refuses such an answer.

/// A Content-Length field value that is not one valid length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidLength;

/// The length so far, fed one field value at a time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ContentLength(Option<u64>);

impl ContentLength {
    /// Adds one field value (`5`, or a list such as `5, 5`).
    pub fn add(&mut self, value: &[u8]) -> Result<(), InvalidLength> {
        for v in value.split(|b| *b == b',') {
            let v = v.trim_ascii();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(InvalidLength);
            }
            let n: u64 = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(InvalidLength)?;
            if self.0.is_some_and(|c| c != n) {
                return Err(InvalidLength);
            }
            self.0 = Some(n);
        }
        Ok(())
    }

    /// The length, once at least one value was added.
    pub fn get(self) -> Option<u64> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[&str]) -> Result<Option<u64>, InvalidLength> {
        let mut cl = ContentLength::default();
        for v in values {
            cl.add(v.as_bytes())?;
        }
        Ok(cl.get())
    }

    #[test]
    fn identical_lists_are_one_length() {
        assert_eq!(of(&[]), Ok(None));
        assert_eq!(of(&["5"]), Ok(Some(5)));
        assert_eq!(of(&["5, 5", " 5 "]), Ok(Some(5)));
        for bad in [
            &["5, 6"][..],
            &["5", "6"],
            &["-1"],
            &[""],
            &["5,"],
            &["1e3"],
            &["99999999999999999999"],
        ] {
            assert_eq!(of(bad), Err(InvalidLength), "{bad:?}");
        }
    }
}
