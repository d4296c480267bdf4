//! Traffic shaping settings (README "Traffic shaping"): plain data, read
//! by `shaping.rs`, which keeps the live per-destination state.

use std::fmt;
use std::time::Duration;

/// `N/UNIT`: N events per second, minute, hour or day (`100/min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// Parses `100/min`, `5/s`, `1000/h`, `10000/d` (also `sec`, `m`,
    /// `hour`, `day`); a count of 0 is refused (leave the option out).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("bad rate {s:?} (use N/s, N/min, N/h or N/d, N above 0)");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }

    /// Milliseconds between two tokens.
    pub fn interval_ms(&self) -> f64 {
        self.per.as_millis() as f64 / f64::from(self.count)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A route's own limits; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestShaping {
    pub max_connections: Option<usize>,
    pub max_messages_per_connection: Option<usize>,
    pub message_rate: Option<Rate>,
    pub connection_rate: Option<Rate>,
}

impl DestShaping {
    pub fn is_empty(&self) -> bool {
        *self == DestShaping::default()
    }

    /// `max-connections 2, message-rate 300/min` (for `route` listings).
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.max_connections {
            out.push(format!("max-connections {n}"));
        }
        if let Some(n) = self.max_messages_per_connection {
            out.push(format!("max-messages-per-connection {n}"));
        }
        if let Some(r) = self.message_rate {
            out.push(format!("message-rate {r}"));
        }
        if let Some(r) = self.connection_rate {
            out.push(format!("connection-rate {r}"));
        }
        out
    }
}

/// The defaults for every destination, and the throttling backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    /// `--max-per-destination`.
    pub max_connections: usize,
    /// `--max-messages-per-connection`.
    pub max_messages_per_connection: usize,
    /// `--destination-message-rate`; `None`: unlimited.
    pub message_rate: Option<Rate>,
    /// `--destination-connection-rate`; `None`: unlimited.
    pub connection_rate: Option<Rate>,
    /// `--throttle-backoff`: the first pause after a throttling reply,
    /// doubling with each further one up to `backoff_max`.
    pub backoff_min: Duration,
    /// `--throttle-backoff-max`.
    pub backoff_max: Duration,
}

impl Default for Shaping {
    fn default() -> Shaping {
        Shaping {
            max_connections: 20,
            max_messages_per_connection: 100,
            message_rate: None,
            connection_rate: None,
            backoff_min: Duration::from_secs(60),
            backoff_max: Duration::from_secs(1800),
        }
    }
}
