//! What `tollgate bench --redis-url` reads from Redis: `INFO`'s CPU time,
//! memory and per-command call counts, on one node or summed over the
//! nodes of a comma-separated list (a cluster's primaries), so that the
//! Redis cost of a decision is measured on Redis's side.

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

/// One reading of `INFO`, or the sum of several nodes' readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `used_cpu_sys` + `used_cpu_user`, seconds.
    pub cpu_secs: f64,
    /// `used_memory`, bytes.
    pub used_memory: u64,
    /// Per command name (`cmdstat_NAME`): (`calls`, `usec`).
    pub commands: BTreeMap<String, (u64, u64)>,
}

impl Snapshot {
    /// Reads the text of `INFO` (any sections; the ones not listed are ignored).
    pub fn parse(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        for line in text.lines() {
            let line = line.trim_end();
            let Some((name, value)) = line.split_once(':') else { continue };
            match name {
                "used_cpu_sys" | "used_cpu_user" => s.cpu_secs += value.parse::<f64>().unwrap_or(0.0),
                "used_memory" => s.used_memory = value.parse().unwrap_or(0),
                _ => {
                    if let Some(cmd) = name.strip_prefix("cmdstat_") {
                        let (mut calls, mut usec) = (0, 0);
                        for field in value.split(',') {
                            match field.split_once('=') {
                                Some(("calls", v)) => calls = v.parse().unwrap_or(0),
                                Some(("usec", v)) => usec = v.parse().unwrap_or(0),
                                _ => {}
                            }
                        }
                        s.commands.insert(cmd.to_string(), (calls, usec));
                    }
                }
            }
        }
        s
    }

    /// The sum of two nodes' readings.
    pub fn add(&mut self, other: &Snapshot) {
        self.cpu_secs += other.cpu_secs;
        self.used_memory += other.used_memory;
        for (name, (c, u)) in &other.commands {
            let e = self.commands.entry(name.clone()).or_default();
            e.0 += c;
            e.1 += u;
        }
    }
}

/// What happened in Redis between two snapshots (summed over intervals).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub cpu_secs: f64,
    /// Per command name: (calls, usec); commands with no calls are left out.
    pub commands: BTreeMap<String, (u64, u64)>,
}

impl Delta {
    /// Adds what happened from `before` to `after`, less `own_info_calls`
    /// calls of `INFO` (the bench's own: the reading `before` is counted
    /// once it has been answered, so it falls inside the interval).
    pub fn add(&mut self, before: &Snapshot, after: &Snapshot, own_info_calls: u64) {
        self.cpu_secs += (after.cpu_secs - before.cpu_secs).max(0.0);
        for (name, (c, u)) in &after.commands {
            let (c0, u0) = before.commands.get(name).copied().unwrap_or_default();
            let mut calls = c.saturating_sub(c0);
            if name == "info" {
                calls = calls.saturating_sub(own_info_calls);
            }
            let usec = u.saturating_sub(u0);
            if calls > 0 {
                let e = self.commands.entry(name.clone()).or_default();
                e.0 += calls;
                e.1 += usec;
            }
        }
    }

    pub fn calls(&self) -> u64 {
        self.commands.values().map(|(c, _)| c).sum()
    }
}

/// Connections to the Redis nodes to read.
pub struct Nodes {
    nodes: Vec<(String, MultiplexedConnection)>,
}

impl Nodes {
    /// Connects to every URL of a comma-separated list. Errors name the
    /// node by its URL with any password hidden.
    pub async fn connect(urls: &str) -> Result<Nodes, String> {
        let mut nodes = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let shown = crate::store::redis::redact_url(url);
            let client = redis::Client::open(url).map_err(|e| format!("Redis {shown}: {e}"))?;
            let conn = client.get_multiplexed_async_connection().await.map_err(|e| format!("Redis {shown}: {e}"))?;
            nodes.push((shown, conn));
        }
        if nodes.is_empty() {
            return Err("--redis-url lists no Redis".into());
        }
        Ok(Nodes { nodes })
    }

    /// How many nodes are read.
    pub fn count(&self) -> usize {
        self.nodes.len()
    }

    /// One reading, summed over the nodes: one `INFO` call per node.
    pub async fn snapshot(&mut self) -> Result<Snapshot, String> {
        let mut sum = Snapshot::default();
        for (shown, conn) in &mut self.nodes {
            // Several sections in one call need Redis 7; older ones take `all`.
            let text = match redis::cmd("INFO").arg("cpu").arg("memory").arg("commandstats").query_async(conn).await {
                Ok(t) => t,
                Err(_) => redis::cmd("INFO")
                    .arg("all")
                    .query_async::<String>(conn)
                    .await
                    .map_err(|e| format!("INFO on Redis {shown}: {e}"))?,
            };
            sum.add(&Snapshot::parse(&text));
        }
        Ok(sum)
    }
}

/// VmRSS of process `pid`, bytes (Linux: `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("{path}: no VmRSS line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n\
        # Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
        # Commandstats\r\ncmdstat_evalsha:calls=10,usec=500,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_hincrby:calls=140,usec=70,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=3,usec=30,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn parses_info() {
        let s = Snapshot::parse(INFO);
        assert_eq!(s.cpu_secs, 3.75);
        assert_eq!(s.used_memory, 1_048_576);
        assert_eq!(s.commands["evalsha"], (10, 500));
        assert_eq!(s.commands["hincrby"], (140, 70));
        assert_eq!(s.commands.len(), 3);
    }

    #[test]
    fn sums_nodes_and_subtracts_readings() {
        let a = Snapshot::parse(INFO);
        let mut two = a.clone();
        two.add(&a);
        assert_eq!((two.cpu_secs, two.used_memory, two.commands["evalsha"]), (7.5, 2_097_152, (20, 1000)));

        let mut later = a.clone();
        later.cpu_secs += 0.5;
        later.commands.insert("evalsha".into(), (15, 800));
        later.commands.insert("info".into(), (4, 40));
        later.commands.insert("xread".into(), (2, 4));
        let mut d = Delta::default();
        d.add(&a, &later, 1);
        assert_eq!(d.cpu_secs, 0.5);
        // hincrby did not move and the one INFO was the bench's own: both left out.
        assert_eq!(
            d.commands.into_iter().collect::<Vec<_>>(),
            vec![("evalsha".to_string(), (5, 300)), ("xread".to_string(), (2, 4))]
        );
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(rss_bytes(u32::MAX).is_err());
    }
}
