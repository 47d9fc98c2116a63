//! Identical upstream questions in flight share one exchange.
//!
//! When several resolutions ask the same server the same question at once, only the first
//! query is sent and the others wait for its outcome. After a restart that is the common case:
//! every question under a zone not yet cached starts with the same minimised query to the
//! zone's parent (at the start of a cold batch edgekit asked the TLD 16 times where Unbound
//! asked twice, docs/benchmarks.md session 8). It also closes the birthday attack: with N
//! identical queries outstanding, a spoofer's forged reply matches one of them about N times
//! as easily, which is why Unbound and BIND never send duplicates.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::SocketAddr,
};

use hickory_proto::rr::{LowerName, Name, RecordType};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{
    name_hash::NameHashState,
    transport::{Exchange, ExchangeError},
};

/// Server, lowercased question name, type.
type Key = (SocketAddr, LowerName, RecordType);

/// What a waiting resolution gets: the reply, or why there is none.
pub(crate) type SharedOutcome = Result<Exchange, String>;

/// The exchanges in flight, each with the resolutions waiting for it.
#[derive(Debug, Default)]
pub(crate) struct InFlightExchanges {
    waiting: Mutex<HashMap<Key, Vec<oneshot::Sender<SharedOutcome>>, NameHashState>>,
}

/// What a resolution does about a question: send it, or wait for the one already sent.
pub(crate) enum Role<'a> {
    /// Send the query, then hand the outcome to [`Leader::finish`].
    Leader(Leader<'a>),
    /// Wait for the leader. A closed channel means the leader was cancelled before it had an
    /// answer (its resolution timed out or its client left): ask the server yourself.
    Follower(oneshot::Receiver<SharedOutcome>),
}

impl InFlightExchanges {
    /// Join the exchange for this question to this server, or start it.
    pub(crate) fn join(
        &self,
        server: SocketAddr,
        name: &Name,
        record_type: RecordType,
    ) -> Role<'_> {
        let key = (server, LowerName::new(name), record_type);
        let mut waiting = self.waiting.lock();
        match waiting.entry(key) {
            Entry::Occupied(mut followers) => {
                let (sender, receiver) = oneshot::channel();
                followers.get_mut().push(sender);
                Role::Follower(receiver)
            }
            Entry::Vacant(vacant) => {
                let key = vacant.key().clone();
                vacant.insert(Vec::new());
                Role::Leader(Leader {
                    owner: self,
                    key: Some(key),
                })
            }
        }
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.waiting.lock().len()
    }
}

/// The resolution that sends the query. Dropping it without [`Leader::finish`] (cancellation)
/// closes its followers' channels, so none of them waits for an answer that will not come.
pub(crate) struct Leader<'a> {
    owner: &'a InFlightExchanges,
    key: Option<Key>,
}

impl Leader<'_> {
    /// Give every follower a copy of the outcome.
    pub(crate) fn finish(mut self, outcome: &Result<Exchange, ExchangeError>) {
        let Some(key) = self.key.take() else {
            return;
        };
        let followers = self.owner.waiting.lock().remove(&key).unwrap_or_default();
        for follower in followers {
            let shared = match outcome {
                Ok(exchange) => Ok(exchange.clone()),
                Err(error) => Err(error.to_string()),
            };
            // A follower that stopped waiting (its own deadline) is no error.
            let _ = follower.send(shared);
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Dropped after the lock is released: closing a follower's channel wakes it.
            let followers = self.owner.waiting.lock().remove(&key);
            drop(followers);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{str::FromStr, time::Duration};

    use hickory_proto::op::Message;

    use super::*;

    fn server() -> SocketAddr {
        "127.0.0.1:53".parse().unwrap()
    }

    fn reply() -> Exchange {
        Exchange {
            message: Message::query(),
            rtt: Duration::from_millis(3),
            over_tcp: false,
        }
    }

    #[test]
    fn the_same_question_in_any_case_joins_the_first() {
        let exchanges = InFlightExchanges::default();
        let lower = Name::from_str("example.test.").unwrap();
        let upper = Name::from_str("EXAMPLE.test.").unwrap();
        let Role::Leader(leader) = exchanges.join(server(), &lower, RecordType::A) else {
            panic!("the first asker sends");
        };
        let Role::Follower(mut follower) = exchanges.join(server(), &upper, RecordType::A) else {
            panic!("the same question in another case waits");
        };
        leader.finish(&Ok(reply()));
        let shared = follower.try_recv().unwrap().unwrap();
        assert_eq!(shared.rtt, Duration::from_millis(3));
        assert_eq!(exchanges.in_flight(), 0);
    }

    #[test]
    fn another_type_or_server_is_another_exchange() {
        let exchanges = InFlightExchanges::default();
        let name = Name::from_str("example.test.").unwrap();
        let _leader = exchanges.join(server(), &name, RecordType::A);
        assert!(matches!(
            exchanges.join(server(), &name, RecordType::AAAA),
            Role::Leader(_)
        ));
        assert!(matches!(
            exchanges.join("127.0.0.2:53".parse().unwrap(), &name, RecordType::A),
            Role::Leader(_)
        ));
    }

    #[test]
    fn failures_are_shared_and_a_cancelled_leader_releases_its_followers() {
        let exchanges = InFlightExchanges::default();
        let name = Name::from_str("example.test.").unwrap();
        let Role::Leader(leader) = exchanges.join(server(), &name, RecordType::A) else {
            panic!("first");
        };
        let Role::Follower(mut follower) = exchanges.join(server(), &name, RecordType::A) else {
            panic!("second");
        };
        leader.finish(&Err(ExchangeError::Timeout(Duration::from_millis(50))));
        let error = follower.try_recv().unwrap().unwrap_err();
        assert!(error.contains("no reply"), "{error}");

        let Role::Leader(leader) = exchanges.join(server(), &name, RecordType::A) else {
            panic!("a finished exchange is not joined again");
        };
        let Role::Follower(mut follower) = exchanges.join(server(), &name, RecordType::A) else {
            panic!("second");
        };
        drop(leader);
        assert!(matches!(
            follower.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(exchanges.in_flight(), 0);
    }
}
