//! Connections to the Redis primary: made directly from a `redis://` URL,
//! or through Redis Sentinel, which is asked where the primary is each time
//! a connection is made. A connection that fails (dropped, refused, the
//! server says `READONLY` after a failover, `MASTERDOWN`, `LOADING`) is
//! dropped, and the next use makes a new one, asking the sentinels again;
//! so is every connection when a sentinel announces `+switch-master`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ErrorKind, RedisError, ServerErrorKind,
    TlsCertificates, TlsMode,
};

use super::endpoint::{Endpoint, SentinelEndpoint};

/// How one connection is made.
enum Connector {
    /// A fixed address.
    Direct(Client),
    /// Wherever the sentinels say the primary is.
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        /// One client per sentinel, for watching `+switch-master`.
        sentinels: Vec<Client>,
        master: String,
    },
}

/// Makes connections to the primary and keeps one for commands.
pub struct Link {
    connector: Connector,
    connect_timeout: Duration,
    /// The command connection, tagged with its generation.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    /// One reconnection at a time.
    reconnecting: tokio::sync::Mutex<()>,
    /// Timeouts in a row on the current connection.
    timeouts: AtomicU32,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field(
                "sentinel",
                &matches!(self.connector, Connector::Sentinel { .. }),
            )
            .finish_non_exhaustive()
    }
}

/// Timeouts in a row after which the connection is made anew: a primary
/// that silently vanished (no reset, no refusal) is only seen this way.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

impl Link {
    /// A link to `endpoint`; `ca` replaces the system roots for TLS.
    /// Connects on first use.
    pub fn new(
        endpoint: &Endpoint,
        ca: Option<&[u8]>,
        connect_timeout: Duration,
    ) -> Result<Self, RedisError> {
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: ca.map(<[u8]>::to_vec),
        };
        let connector = match endpoint {
            Endpoint::Direct { url, .. } => Connector::Direct(match ca {
                None => Client::open(url.expose())?,
                Some(_) => Client::build_with_tls(url.expose(), certs())?,
            }),
            Endpoint::Sentinel(s) => sentinel_connector(s, ca.is_some().then(certs))?,
        };
        Ok(Link {
            connector,
            connect_timeout,
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            reconnecting: tokio::sync::Mutex::new(()),
            timeouts: AtomicU32::new(0),
        })
    }

    /// True when the primary is found through sentinels.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.connector, Connector::Sentinel { .. })
    }

    /// A new connection to the primary, of its own (not the command
    /// connection), with no response timeout: the caller bounds each
    /// command, blocking reads included.
    pub async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let client = match &self.connector {
            Connector::Direct(client) => client.clone(),
            Connector::Sentinel { client, .. } => {
                let mut sentinel = client.lock().await;
                tokio::time::timeout(self.connect_timeout * 4, sentinel.async_get_client())
                    .await
                    .map_err(|_| timeout_error("no sentinel named the primary in time"))??
            }
        };
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The command connection, made if there is none.
    pub async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(c) = self.held() {
            return Ok(c);
        }
        let _one = self.reconnecting.lock().await;
        if let Some(c) = self.held() {
            return Ok(c);
        }
        let conn = self.connect().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.timeouts.store(0, Ordering::Relaxed);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    fn held(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notes how a command on connection `generation` ended, dropping the
    /// connection when the error says it is no good.
    pub fn outcome(&self, generation: u64, error: Option<&RedisError>, timed_out: bool) {
        let drop_it = match (error, timed_out) {
            (_, true) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_RECONNECT
            }
            (Some(e), false) => needs_new_connection(e),
            (None, false) => {
                self.timeouts.store(0, Ordering::Relaxed);
                false
            }
        };
        if drop_it {
            self.forget(Some(generation));
        }
    }

    /// Drops the command connection (only if it is still `generation`,
    /// when given), so the next use connects anew.
    pub fn forget(&self, generation: Option<u64>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if generation.is_none() || current.as_ref().map(|(g, _)| *g) == generation {
            *current = None;
        }
    }

    /// Waits until a sentinel announces that the primary moved. Returns at
    /// once for a direct link (nothing to watch), and after an error when
    /// no sentinel can be subscribed to, so the caller retries.
    pub async fn switched(&self) -> Result<(), RedisError> {
        use futures_util::StreamExt;
        let Connector::Sentinel {
            sentinels, master, ..
        } = &self.connector
        else {
            return Ok(());
        };
        let mut last = None;
        for sentinel in sentinels {
            let pubsub = tokio::time::timeout(self.connect_timeout, sentinel.get_async_pubsub())
                .await
                .map_err(|_| timeout_error("sentinel did not answer"));
            let mut pubsub = match pubsub {
                Ok(Ok(p)) => p,
                Ok(Err(e)) | Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if let Err(e) = pubsub.subscribe("+switch-master").await {
                last = Some(e);
                continue;
            }
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                // "<master name> <old ip> <old port> <new ip> <new port>"
                let payload: String = msg.get_payload().unwrap_or_default();
                if payload.split(' ').next() == Some(master.as_str()) {
                    return Ok(());
                }
            }
            last = Some(RedisError::from((
                ErrorKind::Io,
                "the sentinel closed the subscription",
            )));
        }
        Err(last.unwrap_or_else(|| timeout_error("no sentinel to watch")))
    }
}

fn sentinel_connector(
    s: &SentinelEndpoint,
    certs: Option<TlsCertificates>,
) -> Result<Connector, RedisError> {
    let addr = |host: &str, port: u16| {
        if s.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    };
    let mut builder = SentinelClientBuilder::new(
        s.sentinels.iter().map(|(h, p)| addr(h, *p)),
        &s.master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_db(s.db);
    if let Some(user) = &s.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &s.password {
        builder = builder.set_client_to_redis_password(password.expose());
    }
    if s.tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = &certs {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs.clone());
        }
    }
    let sentinels = s
        .sentinels
        .iter()
        .map(|(h, p)| {
            let info = addr(h, *p);
            match &certs {
                Some(c) if s.tls => Client::build_with_tls(info, c.clone()),
                _ => Client::open(info),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Connector::Sentinel {
        client: tokio::sync::Mutex::new(builder.build()?),
        sentinels,
        master: s.master.clone(),
    })
}

/// True when an error means the connection (or the server behind it) can
/// no longer serve: reconnect, asking the sentinels again.
pub fn needs_new_connection(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
        || e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

fn timeout_error(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}
