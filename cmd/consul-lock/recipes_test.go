package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// The recipes of docs/RECIPES.md that run consul-lock, run as written there.

// Cron on every host, the job on one: while another host holds the lock,
// `exec -try -conflict-exit-code 0` skips the job and exits 0, so cron
// reports nothing; when the lock is free, the job runs.
func TestRecipeCronOnOneHost(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	ran := filepath.Join(t.TempDir(), "ran")
	job := []string{"exec", "-try", "-conflict-exit-code", "0", key, "--", "touch", ran}

	other := mustHold(t, c, key)
	if r := cli(t, job...); r.code != 0 || fileExists(ran) {
		t.Fatalf("with the lock held elsewhere: exit %d, job ran %v; want 0 and skipped (%s)", r.code, fileExists(ran), r.errOut)
	}
	other.Release(context.Background())
	if r := cli(t, job...); r.code != 0 || !fileExists(ran) {
		t.Fatalf("with the lock free: exit %d, job ran %v; want 0 and ran (%s)", r.code, fileExists(ran), r.errOut)
	}
	assertGone(t, c, key)
}

// A migration at deploy time: `exec -timeout` makes a deploy that cannot get
// the lock in time fail with 75 without migrating, and one that gets it run
// the migration and pass its status on.
func TestRecipeMigrationAtDeploy(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	ran := filepath.Join(t.TempDir(), "migrated")
	migrate := []string{"exec", "-timeout", "300ms", "-max-hold", "1m", key, "--", "sh", "-c", "touch " + ran + "; exit 3"}

	other := mustHold(t, c, key)
	if r := cli(t, migrate...); r.code != exitConflict || fileExists(ran) {
		t.Fatalf("while another deploy migrates: exit %d, migrated %v; want %d and not migrated", r.code, fileExists(ran), exitConflict)
	}
	other.Release(context.Background())
	if r := cli(t, migrate...); r.code != 3 || !fileExists(ran) {
		t.Fatalf("with the lock free: exit %d, migrated %v; want the migration's status 3 and migrated", r.code, fileExists(ran))
	}
	assertGone(t, c, key)
}

// A fenced write to a database table: the SQL of the recipe, run by sqlite3
// with exec's CONSUL_LOCK_TOKEN, updates the row for each new holder and
// refuses a write that carries an older token.
func TestRecipeFencedTableWrite(t *testing.T) {
	t.Parallel()
	sqlite, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatalf("no sqlite3 to run the recipe's SQL with (.ci/run installs it: apt-get install sqlite3): %v", err)
	}
	c := consultest.Client(t)
	key := lockKey(t)
	db := filepath.Join(t.TempDir(), "app.db")
	sql := func(q string) string {
		t.Helper()
		out, err := exec.Command(sqlite, db, q).CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3 %q: %v\n%s", q, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	sql("CREATE TABLE report (id INTEGER PRIMARY KEY, body TEXT, fence INTEGER NOT NULL DEFAULT 0); INSERT INTO report (id, body) VALUES (1, '');")
	// The recipe's statement: the row takes a write only from a holder with
	// a newer token than the last writer's.
	write := "sqlite3 " + db + ` "UPDATE report SET body = '$1', fence = $CONSUL_LOCK_TOKEN WHERE id = 1 AND fence < $CONSUL_LOCK_TOKEN; SELECT changes();"`
	for _, body := range []string{"first", "second"} {
		r := cli(t, "exec", key, "--", "sh", "-c", write, "sh", body)
		if r.code != 0 || strings.TrimSpace(r.out) != "1" {
			t.Fatalf("fenced write %q: exit %d, %q %q; want one row changed", body, r.code, r.out, r.errOut)
		}
	}
	if got := sql("UPDATE report SET body = 'stale', fence = 1 WHERE id = 1 AND fence < 1; SELECT changes();"); got != "0" {
		t.Fatalf("a write with an old token changed %s rows, want 0", got)
	}
	if got := sql("SELECT body FROM report WHERE id = 1"); got != "second" {
		t.Fatalf("the row holds %q, want the last holder's write", got)
	}
	assertGone(t, c, key)
}

func mustHold(t *testing.T, c *api.Client, key string) *consullock.EphemeralLock {
	t.Helper()
	l, err := consullock.NewEphemeralLock(key, consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Release(context.Background()) })
	return l
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
