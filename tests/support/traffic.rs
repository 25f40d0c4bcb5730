//! Requests sent back to back in the background while something changes,
//! to prove that it changed without a failed request.

use tokio::task::JoinHandle;

use super::{CONVERGE, http};

/// Requests sent back to back in the background, one connection each, to
/// see every answer while something changes: `GET path` with `headers` to
/// `127.0.0.1:port`, until [`Traffic::stop`].
pub struct Traffic {
    answers: tokio::sync::mpsc::UnboundedReceiver<Answer>,
    seen: Vec<Answer>,
    task: JoinHandle<()>,
}

/// One answer [`Traffic`] got: status and body, or the client's error.
pub type Answer = Result<(u16, String), String>;

impl Traffic {
    /// Starts sending.
    pub fn start(port: u16, path: &str, headers: &[(&str, &str)]) -> Traffic {
        Traffic::start_over(&[port], path, headers)
    }

    /// Starts sending, each request to the next port of `ports` in turn.
    pub fn start_over(ports: &[u16], path: &str, headers: &[(&str, &str)]) -> Traffic {
        let ports = ports.to_vec();
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        let path = path.to_owned();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let task = tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let many = ports.len() > 1;
            for port in ports.iter().cycle() {
                let answer = http::get(*port, &path, &headers)
                    .await
                    .map(|r| (r.status, r.body))
                    .map_err(|e| match many {
                        // Which proxy failed, when there are several.
                        true => format!("port {port}: {e}"),
                        false => e.to_string(),
                    });
                if tx.send(answer).is_err() {
                    return;
                }
            }
        });
        Traffic {
            answers,
            seen: Vec::new(),
            task,
        }
    }

    /// How many answers have been seen so far (by the waits).
    pub fn count(&self) -> usize {
        self.seen.len()
    }

    /// Waits until `count` answers have come back in all.
    ///
    /// # Panics
    ///
    /// After [`CONVERGE`].
    pub async fn wait_for_count(&mut self, count: usize) {
        let what = format!("{count} answers");
        self.wait_for(&what, |seen| seen.len() >= count).await;
    }

    /// Waits until `check` holds for the answers so far.
    ///
    /// # Panics
    ///
    /// After [`CONVERGE`], with `what` and the answers in the message.
    pub async fn wait_for(&mut self, what: &str, mut check: impl FnMut(&[Answer]) -> bool) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while !check(&self.seen) {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Ok(Some(answer)) => self.seen.push(answer),
                Ok(None) => panic!("the traffic task stopped"),
                Err(_) => panic!(
                    "timed out after {CONVERGE:?} waiting for traffic to see {what}; \
                     answers: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Stops sending and returns every answer, in order.
    pub async fn stop(mut self) -> Vec<Answer> {
        self.answers.close();
        while let Some(answer) = self.answers.recv().await {
            self.seen.push(answer);
        }
        let _ = (&mut self.task).await;
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}
