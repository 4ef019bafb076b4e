/*
 * test_broker_redis.c - one connection to the broker (engine/broker/redis.c)
 * against a redis-server of the test's own, on a free loopback port without
 * persistence: the function library loaded and callable, binary-safe
 * commands, pipelining, error replies handed back as replies, a db, AUTH
 * (password, ACL user, none given, wrong), and the connection lost (the
 * client killed, a broken pipe that must not end the process, a broker
 * frozen past the timeout, a broker gone): each a NULL or -1 with a message
 * naming the broker, then a reopen.
 *
 * Needs redis-server (scripts/deps.sh installs it).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "check.h"
#include "redis.h"

static pid_t server;
static int port;
static char dir[] = "/tmp/luapool-test-redis.XXXXXX";

static void pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* A loopback port nothing listens on now (the kernel's pick). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    perror("free_port");
    exit(1);
  }
  close(fd);
  return ntohs(a.sin_port);
}

static lp_broker_url url_of(const char *text) {
  lp_broker_url u;
  char err[512];
  if (lp_broker_url_parse(text, &u, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  return u;
}

static lp_broker_url local_url(const char *userinfo, int db) {
  char text[256];
  snprintf(text, sizeof text, "redis://%s127.0.0.1:%d/%d", userinfo, port, db);
  return url_of(text);
}

/* Starts redis-server on a free port; 0 once it answers PING, else -1
 * (the port was taken: try another). */
static int start_server(void) {
  port = free_port();
  char portstr[16], log[256];
  snprintf(portstr, sizeof portstr, "%d", port);
  snprintf(log, sizeof log, "%s/redis.log", dir);
  server = fork();
  if (server == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a test that crashes leaves no server behind */
    execlp("redis-server", "redis-server", "--port", portstr, "--bind", "127.0.0.1", "--dir", dir,
           "--logfile", log, "--save", "", "--appendonly", "no", (char *)NULL);
    _exit(127);
  }
  lp_broker_url u = local_url("", 0);
  for (int i = 0; i < 400; i++) { /* up to 20 s */
    int status;
    if (waitpid(server, &status, WNOHANG) == server) {
      if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        fprintf(stderr, "redis-server not found: run scripts/deps.sh\n");
        exit(1);
      }
      return -1;
    }
    lp_redis r;
    if (lp_redis_open(&r, &u, 1.0, 0) == 0) {
      lp_redis_close(&r);
      return 0;
    }
    pause_ms(50);
  }
  fprintf(stderr, "redis-server does not answer on port %d\n", port);
  exit(1);
}

static void stop_server(void) {
  if (server > 0) {
    kill(server, SIGCONT);
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    server = 0;
  }
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static int starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Runs a command given as words on r; the reply's integer, or -1000 when
 * it is not an integer reply. */
static long long integer(lp_redis *r, const char *fmt) {
  redisReply *reply = lp_redis_cmdf(r, fmt);
  long long v = reply && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1000;
  if (reply) freeReplyObject(reply);
  return v;
}

static void commands(void) {
  lp_broker_url u = local_url("", 0);
  lp_redis r;
  CHECK_EQ(lp_redis_open(&r, &u, 5.0, 1), 0);
  CHECK_EQ(integer(&r, "FCALL lp_version 0"), 1); /* the library is loaded */
  /* Loading it again (another connection, a reconnect) replaces it. */
  lp_redis again;
  CHECK_EQ(lp_redis_open(&again, &u, 5.0, 1), 0);
  lp_redis_close(&again);
  redisReply *lib = lp_redis_cmdf(&r, "FUNCTION LIST LIBRARYNAME luapool");
  CHECK(lib && lib->type == REDIS_REPLY_ARRAY && lib->elements == 1);
  if (lib) freeReplyObject(lib);

  /* Binary-safe arguments. */
  const char *set[] = {"SET", "bin", "a\0b"};
  const size_t setl[] = {3, 3, 3};
  redisReply *reply = lp_redis_cmd(&r, 3, set, setl);
  CHECK(reply && reply->type == REDIS_REPLY_STATUS);
  if (reply) freeReplyObject(reply);
  const char *get[] = {"GET", "bin"};
  reply = lp_redis_cmd(&r, 2, get, NULL);
  CHECK(reply && reply->type == REDIS_REPLY_STRING && reply->len == 3 &&
        memcmp(reply->str, "a\0b", 3) == 0);
  if (reply) freeReplyObject(reply);

  /* An error reply is a reply, and the connection stays. */
  reply = lp_redis_cmdf(&r, "HGET bin x");
  CHECK(reply && reply->type == REDIS_REPLY_ERROR && starts_with(reply->str, "WRONGTYPE"));
  if (reply) freeReplyObject(reply);
  CHECK(r.c != NULL);

  /* Pipelining: 1000 commands queued, then their replies in order. */
  const char *incr[] = {"INCR", "n"};
  for (int i = 0; i < 1000; i++) CHECK_EQ(lp_redis_append(&r, 2, incr, NULL), 0);
  long long last = 0, in_order = 1;
  for (int i = 0; i < 1000; i++) {
    reply = lp_redis_reply(&r);
    if (!reply) break;
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer != last + 1) in_order = 0;
    last = reply->integer;
    freeReplyObject(reply);
  }
  CHECK_EQ(last, 1000);
  CHECK(in_order);
  lp_redis_close(&r);
  lp_redis_close(&r); /* twice: harmless */

  /* A db: its keys are its own. */
  lp_broker_url u2 = local_url("", 2);
  CHECK_EQ(lp_redis_open(&r, &u2, 5.0, 0), 0);
  CHECK_EQ(integer(&r, "EXISTS n"), 0);
  CHECK_EQ(integer(&r, "INCR only-in-2"), 1);
  lp_redis_close(&r);
  lp_broker_url u99 = local_url("", 99);
  CHECK_EQ(lp_redis_open(&r, &u99, 5.0, 0), -1);
  CHECK(starts_with(r.err, "the broker at redis://127.0.0.1:"));
  CHECK(strstr(r.err, "/99 refused SELECT 99: ERR") != NULL);
  CHECK(r.c == NULL);
}

static void auth(void) {
  lp_broker_url u = local_url("", 0);
  lp_redis admin;
  CHECK_EQ(lp_redis_open(&admin, &u, 5.0, 0), 0);
  redisReply *reply = lp_redis_cmdf(&admin, "ACL SETUSER alice on >wonder ~* &* +@all");
  CHECK(reply && reply->type == REDIS_REPLY_STATUS);
  if (reply) freeReplyObject(reply);
  reply = lp_redis_cmdf(&admin, "CONFIG SET requirepass s3cret");
  CHECK(reply && reply->type == REDIS_REPLY_STATUS);
  if (reply) freeReplyObject(reply);

  lp_redis r;
  char shown[128];
  snprintf(shown, sizeof shown, "redis://127.0.0.1:%d", port);
  CHECK_EQ(lp_redis_open(&r, &u, 5.0, 1), -1); /* no password given */
  CHECK(starts_with(r.err, "the broker at "));
  CHECK(strstr(r.err, shown) && strstr(r.err, "wants a password (NOAUTH)"));
  CHECK(r.c == NULL);

  lp_broker_url wrong = local_url(":nope@", 0);
  CHECK_EQ(lp_redis_open(&r, &wrong, 5.0, 1), -1);
  CHECK(strstr(r.err, "refused AUTH: WRONGPASS") != NULL);
  CHECK(strstr(r.err, "nope") == NULL);

  lp_broker_url right = local_url(":s3cret@", 0);
  CHECK_EQ(lp_redis_open(&r, &right, 5.0, 1), 0);
  CHECK_EQ(integer(&r, "FCALL lp_version 0"), 1);
  lp_redis_close(&r);

  lp_broker_url alice = local_url("alice:wonder@", 0);
  CHECK_EQ(lp_redis_open(&r, &alice, 5.0, 1), 0);
  redisReply *who = lp_redis_cmdf(&r, "ACL WHOAMI");
  CHECK(who && who->type == REDIS_REPLY_STRING && strcmp(who->str, "alice") == 0);
  if (who) freeReplyObject(who);
  lp_redis_close(&r);

  lp_broker_url bad_alice = local_url("alice:s3cret@", 0);
  CHECK_EQ(lp_redis_open(&r, &bad_alice, 5.0, 1), -1);
  snprintf(shown, sizeof shown, "the broker at redis://alice@127.0.0.1:%d refused AUTH: ", port);
  CHECK(starts_with(r.err, shown));

  /* The admin connection authenticated before the password was set. */
  reply = lp_redis_cmdf(&admin, "CONFIG SET requirepass %s", "");
  CHECK(reply && reply->type == REDIS_REPLY_STATUS);
  if (reply) freeReplyObject(reply);
  lp_redis_close(&admin);
}

/* Kills r's connection from another one (CLIENT KILL). */
static void kill_client(lp_redis *r) {
  redisReply *id = lp_redis_cmdf(r, "CLIENT ID");
  lp_broker_url u = r->url;
  lp_redis other;
  CHECK_EQ(lp_redis_open(&other, &u, 5.0, 0), 0);
  redisReply *killed = lp_redis_cmdf(&other, "CLIENT KILL ID %lld", id ? id->integer : 0);
  CHECK(killed && killed->type == REDIS_REPLY_INTEGER && killed->integer == 1);
  if (killed) freeReplyObject(killed);
  if (id) freeReplyObject(id);
  lp_redis_close(&other);
}

static void lost(void) {
  lp_broker_url u = local_url("", 0);
  lp_redis r;
  char lost_prefix[128];
  snprintf(lost_prefix, sizeof lost_prefix, "lost the broker at redis://127.0.0.1:%d: ", port);

  /* Killed: the next command fails, the connection is closed; a reopen
   * (of the same URL, from r itself) works. */
  CHECK_EQ(lp_redis_open(&r, &u, 5.0, 0), 0);
  kill_client(&r);
  CHECK(lp_redis_cmdf(&r, "PING") == NULL);
  CHECK(starts_with(r.err, lost_prefix));
  CHECK(r.c == NULL);
  CHECK(lp_redis_cmdf(&r, "PING") == NULL); /* closed: the reason stays */
  CHECK(starts_with(r.err, lost_prefix));
  CHECK_EQ(lp_redis_append(&r, 1, (const char *[]){"PING"}, NULL), -1);
  CHECK(lp_redis_reply(&r) == NULL);
  CHECK_EQ(lp_redis_open(&r, &r.url, 5.0, 0), 0);
  CHECK_EQ(integer(&r, "EXISTS n"), 1);

  /* A broken pipe: 32 MB written to a killed connection raises SIGPIPE
   * in this process (default action: end it) unless redis.c keeps it. */
  kill_client(&r);
  pause_ms(100);
  size_t big = 32u << 20;
  char *value = malloc(big);
  memset(value, 'x', big);
  const char *set[] = {"SET", "big", value};
  const size_t setl[] = {3, 3, big};
  CHECK(lp_redis_cmd(&r, 3, set, setl) == NULL);
  CHECK(starts_with(r.err, lost_prefix));
  /* Pipelined, the same: the write happens in lp_redis_reply. */
  CHECK_EQ(lp_redis_open(&r, &u, 5.0, 0), 0);
  kill_client(&r);
  pause_ms(100);
  CHECK_EQ(lp_redis_append(&r, 3, set, setl), 0);
  CHECK(lp_redis_reply(&r) == NULL);
  CHECK(starts_with(r.err, lost_prefix));
  free(value);
  sigset_t pending, mask;
  sigpending(&pending);
  CHECK(!sigismember(&pending, SIGPIPE));
  sigprocmask(SIG_SETMASK, NULL, &mask);
  CHECK(!sigismember(&mask, SIGPIPE)); /* the thread's mask as it was */

  /* Frozen past the timeout: no answer within it. */
  CHECK_EQ(lp_redis_open(&r, &u, 0.3, 0), 0);
  kill(server, SIGSTOP);
  CHECK(lp_redis_cmdf(&r, "PING") == NULL);
  CHECK(starts_with(r.err, lost_prefix));
  CHECK(strstr(r.err, "no answer within 0.3 s") != NULL);
  lp_redis fresh;
  CHECK_EQ(lp_redis_open(&fresh, &u, 0.3, 0), -1); /* connects (the kernel's backlog), no reply */
  CHECK(strstr(fresh.err, "no answer within 0.3 s") != NULL);
  kill(server, SIGCONT);

  /* Gone: commands fail, and opening says the address is refused. */
  CHECK_EQ(lp_redis_open(&r, &u, 5.0, 0), 0);
  kill(server, SIGKILL);
  waitpid(server, NULL, 0);
  server = 0;
  CHECK(lp_redis_cmdf(&r, "PING") == NULL);
  CHECK(starts_with(r.err, lost_prefix));
  CHECK_EQ(lp_redis_open(&r, &u, 5.0, 0), -1);
  char refused[128];
  snprintf(refused, sizeof refused,
           "cannot reach the broker at redis://127.0.0.1:%d: Connection refused", port);
  CHECK_STR(r.err, refused);
}

int main(void) {
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  int started = -1;
  for (int attempt = 0; attempt < 8 && started != 0; attempt++) started = start_server();
  if (started != 0) {
    fprintf(stderr, "redis-server would not start (see %s/redis.log)\n", dir);
    return 1;
  }
  commands();
  auth();
  lost();
  stop_server();
  return check_report("test_broker_redis");
}
