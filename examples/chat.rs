//! A chat room in-process: ticketgate admits the sockets, this handler does the
//! business. Every admitted socket is in the room; a client's
//! `{"type":"send","id":"1","data":{"say":"hi"}}` is pushed to every member as
//! `{"type":"push","topic":"chat","data":{"from":"alice","text":"hi"}}`, and the sender
//! gets `{"type":"reply","id":"1","data":{"delivered":N}}`.
//!
//! ```text
//! cargo run --example chat                 # listens on 127.0.0.1:8080, users alice and bob
//! ```
//!
//! The sender's name comes from the verified identity, never from the message: a
//! client cannot speak for someone else. Settings are the usual `TICKETGATE_*`
//! variables; the users file and data dir default to `./chat-example/`.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use ticketgate::handler::{Context, Refused, SessionHandler};
use ticketgate::{Config, Server};

/// The demo users' password.
const PASSWORD: &str = "correct horse battery staple";

/// Who is in the room: user id by connection id (a user may have several sockets).
#[derive(Default)]
struct Room {
    members: Mutex<HashMap<String, String>>,
}

impl Room {
    fn users(&self) -> Vec<String> {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let mut users: Vec<String> = members.values().cloned().collect();
        users.sort();
        users.dedup();
        users
    }

    /// Pushes `data` on topic `chat` to every member; how many sockets it reached.
    async fn broadcast(&self, cx: &Context, data: Value) -> u64 {
        let mut delivered = 0;
        for user in self.users() {
            match cx.push().to_user(&user, "chat", data.clone()).await {
                Ok(pushed) => delivered += pushed.delivered,
                Err(e) => eprintln!("push to {user} failed: {e}"),
            }
        }
        delivered
    }
}

#[ticketgate::async_trait]
impl SessionHandler for Room {
    async fn connect(&self, cx: &Context) {
        let who = cx.identity();
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(who.conn_id.clone(), who.user_id.clone());
        self.broadcast(cx, json!({ "joined": who.user_id })).await;
    }

    async fn message(&self, cx: &Context, _id: &str, data: Value) -> Result<Value, Refused> {
        let Some(text) = data["say"].as_str() else {
            return Err(Refused::new("bad_message", r#"send {"say": "<text>"}"#));
        };
        if text.is_empty() || text.len() > 1000 {
            return Err(Refused::new("bad_message", "say 1 to 1000 bytes"));
        }
        let from = &cx.identity().user_id;
        let delivered = self
            .broadcast(cx, json!({ "from": from, "text": text }))
            .await;
        Ok(json!({ "delivered": delivered }))
    }

    async fn disconnect(&self, cx: &Context, code: u16) {
        let who = cx.identity();
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&who.conn_id);
        self.broadcast(cx, json!({ "left": who.user_id, "code": code }))
            .await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(None)?;
    if std::env::var_os("TICKETGATE_USERS_FILE").is_none() {
        config.users_file = "chat-example/users.toml".into();
    }
    if std::env::var_os("TICKETGATE_DATA_DIR").is_none() {
        config.data_dir = "chat-example/data".into();
    }
    if !config.users_file.exists() {
        if let Some(dir) = config.users_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        for user in ["alice", "bob"] {
            ticketgate::auth::users::add_user(&config.users_file, user, PASSWORD)?;
        }
        println!("created users alice and bob (password {PASSWORD:?})");
    }
    let server = Server::builder(config)
        .handler(Room::default())
        .bind()
        .await?;
    println!(
        "chat room on http://{}: log in, mint a ticket, connect, send {{\"say\": ...}}",
        server.local_addr()
    );
    server.run(ticketgate::shutdown::os_signal()).await;
    Ok(())
}
