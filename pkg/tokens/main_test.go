package tokens_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/devstatus/devstatus/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testenv.LeakOptions()...) }
