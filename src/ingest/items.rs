//! The JSON inputs of the wearable formats, read one value at a time: a file holding one
//! value, a JSON array of them (read element by element), or one per line (NDJSON). A long
//! file is never held whole, and no single value may be longer than [`MAX_ITEM`] bytes, so a
//! malicious file cannot make one value take all memory.

use std::cell::Cell;
use std::io::{BufRead, Read};
use std::rc::Rc;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

use super::{Problem, Record};

/// Longest JSON value (an array element, or a top-level value) read as one item.
pub const MAX_ITEM: u64 = 1 << 20;

/// How reading the items ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Every item was read.
    Complete,
    /// The JSON broke after `items` items were read (a truncated file, a bad byte, an item
    /// longer than [`MAX_ITEM`]): the rest cannot be split into items.
    Broken { items: usize, error: String },
}

impl End {
    /// The refused record that stands for a break, at the item where the JSON broke (`at` of
    /// its index from 1); `None` when every item was read.
    pub fn broken_record(self, at: impl FnOnce(usize) -> String) -> Option<Record> {
        match self {
            End::Complete => None,
            End::Broken { items, error } => Some(Record::new(
                at(items + 1),
                Err(Problem::new(format!("malformed JSON ({error}); the rest of the file is not read"))),
            )),
        }
    }
}

/// Skips a byte-order mark at the start of `input`: it says nothing about the content.
pub fn skip_byte_order_mark(input: &mut impl BufRead) -> std::io::Result<()> {
    if input.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        input.consume(3);
    }
    Ok(())
}

/// Reads the items of `input`, giving each to `each` with its index from 1. Fails (with the
/// reason) when the input is empty or its first item is not JSON at all.
pub fn read(mut input: impl BufRead, each: &mut dyn FnMut(usize, Value)) -> Result<End, String> {
    skip_byte_order_mark(&mut input).map_err(|error| format!("cannot read the input: {error}"))?;
    let first = loop {
        let buffer = input.fill_buf().map_err(|error| format!("cannot read the input: {error}"))?;
        match buffer.iter().position(|byte| !byte.is_ascii_whitespace()) {
            Some(at) => {
                let byte = buffer[at];
                input.consume(at);
                break Some(byte);
            }
            None if buffer.is_empty() => break None,
            None => {
                let length = buffer.len();
                input.consume(length);
            }
        }
    };
    let since_item = Rc::new(Cell::new(0));
    let bounded = Bounded { inner: input, since_item: since_item.clone() };
    let mut count = 0;
    let broken = |count: usize, error: serde_json::Error, since_item: &Cell<u64>| {
        let error = if since_item.get() > MAX_ITEM {
            format!("an item is longer than {MAX_ITEM} bytes")
        } else {
            error.to_string()
        };
        if count == 0 { Err(error) } else { Ok(End::Broken { items: count, error }) }
    };
    match first {
        None => Err("the file is empty".to_owned()),
        Some(b'[') => {
            let mut deserializer = serde_json::Deserializer::from_reader(bounded);
            let read = (&mut deserializer)
                .deserialize_seq(EachElement { count: &mut count, since_item: &since_item, each })
                .and_then(|()| deserializer.end());
            match read {
                Ok(()) => Ok(End::Complete),
                Err(error) => broken(count, error, &since_item),
            }
        }
        Some(_) => {
            for item in serde_json::Deserializer::from_reader(bounded).into_iter::<Value>() {
                match item {
                    Ok(value) => {
                        count += 1;
                        since_item.set(0);
                        each(count, value);
                    }
                    Err(error) => return broken(count, error, &since_item),
                }
            }
            Ok(End::Complete)
        }
    }
}

/// Fails a read once more than [`MAX_ITEM`] bytes have passed since the last item ended.
struct Bounded<R> {
    inner: R,
    since_item: Rc<Cell<u64>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.since_item.get() > MAX_ITEM {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "item too long"));
        }
        let count = self.inner.read(buffer)?;
        self.since_item.set(self.since_item.get() + count as u64);
        Ok(count)
    }
}

/// Hands each element of a JSON array over as it is parsed.
struct EachElement<'e> {
    count: &'e mut usize,
    since_item: &'e Cell<u64>,
    each: &'e mut dyn FnMut(usize, Value),
}

impl<'de> Visitor<'de> for EachElement<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element::<Value>()? {
            *self.count += 1;
            self.since_item.set(0);
            (self.each)(*self.count, value);
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for EachElement<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &[u8]) -> (Result<End, String>, Vec<Value>) {
        let mut values = Vec::new();
        let end = read(text, &mut |_, value| values.push(value));
        (end, values)
    }

    #[test]
    fn arrays_lines_and_single_values_are_read_item_by_item() {
        assert_eq!(all(b" [1, {\"a\": 2}, 3] ").1.len(), 3);
        assert_eq!(all(b"{\"a\": 1}\n\n{\"a\": 2}\n").1.len(), 2);
        assert_eq!(all(b"{\"a\": 1}").1.len(), 1);
        assert_eq!(all("\u{feff}[1, 2]".as_bytes()).1.len(), 2, "a byte-order mark is skipped");
        assert_eq!(all(b"").0, Err("the file is empty".to_owned()));
        assert!(all(b"<xml/>").0.is_err());
        let (end, values) = all(b"[1, 2, {\"trunc");
        assert_eq!(values.len(), 2);
        assert!(matches!(end, Ok(End::Broken { items: 2, .. })));
    }

    /// The bound: an item longer than MAX_ITEM ends the reading, whether it is an array's
    /// element or a top-level value, and what came before it is kept.
    #[test]
    fn an_item_longer_than_the_bound_ends_the_reading() {
        let long = format!("\"{}\"", "x".repeat(MAX_ITEM as usize + 10));
        let (end, values) = all(format!("[1, {long}, 3]").as_bytes());
        assert_eq!(values, vec![serde_json::json!(1)]);
        assert_eq!(end, Ok(End::Broken { items: 1, error: format!("an item is longer than {MAX_ITEM} bytes") }));
        let (end, values) = all(format!("{{\"a\": 1}}\n{{\"b\": {long}}}").as_bytes());
        assert_eq!(values.len(), 1);
        assert!(matches!(end, Ok(End::Broken { items: 1, .. })));
        // Many items each under the bound are fine, however long the file.
        let many = format!("[{}]", vec![format!("\"{}\"", "y".repeat(1000)); 2_000].join(","));
        let (end, values) = all(many.as_bytes());
        assert_eq!((end, values.len()), (Ok(End::Complete), 2_000));
    }
}
