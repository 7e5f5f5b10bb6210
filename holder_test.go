package consullock_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

// holderEnv makes this test binary a holder process: addr|name|session TTL|
// lock delay|data key. The holder takes the lock through a Locker, prints
// "held TOKEN", then, every 50 ms, checks Err and makes a fenced write of a
// counter to the data key, printing "wrote N" — or "refused ..." and exit 4
// when Consul refuses the write. When Err reports the loss, it prints
// "lost ...", then tries one more fenced write anyway, straight through
// Consul's transaction API (as a holder that ignored Err would), prints
// "zombie write refused" or "zombie write landed", and exits 3.
const holderEnv = "CONSULLOCK_TEST_HOLDER"

func runHolder() int {
	parts := strings.Split(os.Getenv(holderEnv), "|")
	ttl, err1 := time.ParseDuration(parts[2])
	delay, err2 := time.ParseDuration(parts[3])
	if len(parts) != 5 || err1 != nil || err2 != nil {
		fmt.Println("bad", holderEnv)
		return 2
	}
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = parts[0]
	c, err := api.NewClient(cfg)
	if err != nil {
		fmt.Println("client:", err)
		return 2
	}
	lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithSessionTTL(ttl),
		consullock.WithLockDelay(delay), consullock.WithAcquireTimeout(time.Minute))
	if err != nil {
		fmt.Println("locker:", err)
		return 2
	}
	ctx := context.Background()
	l, err := lk.Acquire(ctx, parts[1])
	if err != nil {
		fmt.Println("acquire:", err)
		return 2
	}
	fmt.Printf("held %d\n", l.Token())
	for seq := 0; ; seq++ {
		if err := l.Err(); err != nil {
			fmt.Printf("lost %v\n", err)
			ok, _, _, err := c.KV().Txn(api.KVTxnOps{l.CheckOp(), {Verb: api.KVSet, Key: parts[4], Value: []byte("zombie")}}, nil)
			switch {
			case err != nil:
				fmt.Printf("zombie write failed: %v\n", err)
			case ok:
				fmt.Println("zombie write landed")
			default:
				fmt.Println("zombie write refused")
			}
			return 3
		}
		if err := l.PutFenced(ctx, parts[4], []byte(fmt.Sprint(seq))); err != nil {
			fmt.Printf("refused %v\n", err)
			return 4
		}
		fmt.Printf("wrote %d\n", seq)
		time.Sleep(50 * time.Millisecond) // the pace of the holder's work
	}
}

// holderProc is a running holder process and the lines it printed, each
// with the time it was read.
type holderProc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []holderLine
	done  chan struct{} // closed when its output ends
}

type holderLine struct {
	at   time.Time
	text string
}

func startHolder(t *testing.T, addr, name string, ttl, delay time.Duration, data string) *holderProc {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s|%s|%s", holderEnv, addr, name, ttl, delay, data))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holderProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.mu.Lock()
			h.lines = append(h.lines, holderLine{time.Now(), sc.Text()})
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return h
}

// printed reports whether the holder printed a line starting with prefix
// after since.
func (h *holderProc) printed(prefix string, since time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range h.lines {
		if strings.HasPrefix(l.text, prefix) && !l.at.Before(since) {
			return true
		}
	}
	return false
}

// after returns the lines printed after since.
func (h *holderProc) after(since time.Time) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, l := range h.lines {
		if !l.at.Before(since) {
			out = append(out, l.text)
		}
	}
	return out
}
