//! `--engine`: where a run's SQL executes.

use std::fmt;
use std::str::FromStr;

use crate::ClusterError;

/// The scheduler port Ballista uses when a URL names none.
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Where Silver and Gold plan and run their SQL models.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QueryEngine {
    /// In-process DataFusion (the default).
    #[default]
    Local,
    /// A Ballista cluster: the scheduler at `host:port` plans each query into stages its
    /// executors run.
    Ballista { host: String, port: u16 },
}

impl QueryEngine {
    pub fn is_local(&self) -> bool {
        matches!(self, QueryEngine::Local)
    }

    /// The scheduler's gRPC URL, for a cluster engine.
    pub fn scheduler_url(&self) -> Option<String> {
        match self {
            QueryEngine::Local => None,
            QueryEngine::Ballista { host, port } => Some(format!("df://{host}:{port}")),
        }
    }
}

impl FromStr for QueryEngine {
    type Err = ClusterError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ClusterError::InvalidEngine {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if value == "local" {
            return Ok(QueryEngine::Local);
        }
        let Some(address) = value.strip_prefix("ballista://") else {
            return Err(invalid("use `local` or `ballista://HOST:PORT`"));
        };
        let address = address.trim_end_matches('/');
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| invalid(&format!("'{port}' is not a port number")))?;
                (host, port)
            }
            None => (address, DEFAULT_SCHEDULER_PORT),
        };
        if host.is_empty() || host.contains('/') {
            return Err(invalid("name the scheduler as ballista://HOST:PORT"));
        }
        Ok(QueryEngine::Ballista {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for QueryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryEngine::Local => f.write_str("local"),
            QueryEngine::Ballista { host, port } => write!(f, "ballista://{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_and_cluster_engines() {
        assert_eq!("local".parse::<QueryEngine>().unwrap(), QueryEngine::Local);
        let cluster: QueryEngine = "ballista://10.0.0.5:50070".parse().unwrap();
        assert_eq!(
            cluster,
            QueryEngine::Ballista {
                host: "10.0.0.5".into(),
                port: 50070
            }
        );
        assert_eq!(cluster.to_string(), "ballista://10.0.0.5:50070");
        assert_eq!(
            "ballista://scheduler".parse::<QueryEngine>().unwrap(),
            QueryEngine::Ballista {
                host: "scheduler".into(),
                port: DEFAULT_SCHEDULER_PORT
            }
        );
    }

    #[test]
    fn refuses_other_engines_naming_the_value() {
        for bad in [
            "spark://x:7077",
            "ballista://",
            "ballista://h:port",
            "Local",
        ] {
            let error = bad.parse::<QueryEngine>().unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }
}
