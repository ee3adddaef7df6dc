//! Named JSON records of one kind in the `auth` table, under `<prefix><name>`: how clients and
//! users are kept, read, listed and removed.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fhir::FhirError;
use crate::store::auth::{AuthRead, AuthTxn};
use crate::store::{Store, StoreError};

/// One kind of record, by its key prefix (`client/`, `user/`).
pub struct Records {
    prefix: &'static [u8],
}

impl Records {
    pub const fn new(prefix: &'static [u8]) -> Records {
        Records { prefix }
    }

    fn key(&self, name: &str) -> Vec<u8> {
        [self.prefix, name.as_bytes()].concat()
    }

    fn decode<T: DeserializeOwned>(key: Vec<u8>, value: Option<Vec<u8>>) -> Result<Option<T>, StoreError> {
        match value {
            Some(value) => serde_json::from_slice(&value).map(Some).map_err(|_| StoreError::Corrupt(key)),
            None => Ok(None),
        }
    }

    /// The record `name`, as last committed.
    pub fn get<T: DeserializeOwned>(&self, read: &AuthRead, name: &str) -> Result<Option<T>, StoreError> {
        let key = self.key(name);
        let value = read.get(&key)?;
        Self::decode(key, value)
    }

    /// The record `name` inside a piece of auth work.
    pub fn get_in<T: DeserializeOwned>(&self, txn: &AuthTxn<'_>, name: &str) -> Result<Option<T>, StoreError> {
        let key = self.key(name);
        let value = txn.get(&key)?;
        Self::decode(key, value)
    }

    /// Writes the record `name` inside a piece of auth work.
    pub fn put_in<T: Serialize>(&self, txn: &mut AuthTxn<'_>, name: &str, record: &T) -> Result<(), FhirError> {
        let value = serde_json::to_vec(record).map_err(|_| FhirError::fault("auth"))?;
        txn.insert(&self.key(name), &value);
        Ok(())
    }

    /// Removes the record `name` inside a piece of auth work.
    pub fn remove_in(&self, txn: &mut AuthTxn<'_>, name: &str) {
        txn.remove(&self.key(name));
    }

    /// Writes `record` as `name` unless one exists; false if one did.
    pub async fn insert_new<T: Serialize>(&self, store: &Store, name: &str, record: &T) -> Result<bool, FhirError> {
        let key = self.key(name);
        let value = serde_json::to_vec(record).map_err(|_| FhirError::fault("auth"))?;
        store
            .auth_write(move |txn| {
                if txn.get(&key)?.is_some() {
                    return Ok(false);
                }
                txn.insert(&key, &value);
                Ok(true)
            })
            .await
    }

    /// Every record of the kind, in name order.
    pub fn all<T: DeserializeOwned>(&self, store: &Store) -> Result<Vec<T>, StoreError> {
        store.auth_read(|read| {
            read.scan(self.prefix)?
                .into_iter()
                .map(|(key, value)| serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(key)))
                .collect()
        })
    }

    /// Removes the record `name`; false if there was none.
    pub async fn remove(&self, store: &Store, name: &str) -> Result<bool, FhirError> {
        let key = self.key(name);
        store
            .auth_write(move |txn| {
                let existed = txn.get(&key)?.is_some();
                txn.remove(&key);
                Ok(existed)
            })
            .await
    }
}
