# /hstest/run.sh in the Debian 12 test system (run by hstest.service after
# multi-user.target; its output is the serial console). Two boots: the
# first installs the package and applies a kernel patch, the second checks
# that the boot hook re-applied it, then removes and purges the package.
set +e
say() { echo "HSTEST $*"; }
if [ ! -f /hstest/phase2 ]; then
  say booted $(uname -r) pid1=$(cat /proc/1/comm)
  dpkg -i /hstest/hotsplice.deb > /hstest/dpkg.log 2>&1; say dpkg-install rc=$?
  sed 's/^/HSTEST dpkg: /' /hstest/dpkg.log
  for u in hotsplice.service hotsplice-boot.service hotsplice-autoinstall.timer; do
    say unit $u $(systemctl is-enabled $u) $(systemctl is-active $u)
  done
  say links $(ls /usr/sbin | grep -E '^(ksplice|uptrack-|hotsplice)' | tr '\n' ' ')
  cp /hstest/test.pub /etc/hotsplice/keys/
  ksplice -y kernel upgrade --from /hstest/feed > /hstest/up.log 2>&1; say ksplice-upgrade rc=$?
  sed 's/^/HSTEST upgrade: /' /hstest/up.log
  say uptrack-uname-r $(uptrack-uname -r)
  say uname-r $(uname -r)
  out=$(hotsplice check --from /hstest/feed); rc=$?; say check-applied rc=$rc "$out"
  ksplice -y -q kernel remove --all
  out=$(hotsplice check --from /hstest/feed); rc=$?; say check-not-applied rc=$rc "$out"
  ksplice -y -q kernel upgrade --from /hstest/feed
  say uptrack-show "$(uptrack-show | tr '\n' '|')"
  if [ -f /hstest/hsdemo ]; then
    # A patched userspace service: systemd restarts it, the daemon patches
    # the new process.
    install -m 0755 /hstest/hsdemo /usr/local/bin/hsdemo
    printf '[Service]\nExecStart=/usr/local/bin/hsdemo\n' > /etc/systemd/system/hsdemo.service
    systemctl daemon-reload
    systemctl start hsdemo.service
    sleep 1
    hotsplice user install /hstest/hsdemo.hsp > /hstest/inst.log 2>&1; say user-install rc=$? "$(cat /hstest/inst.log)"
    cur=$(journalctl -u hsdemo.service -n 0 --show-cursor -o cat | sed -n 's/^-- cursor: //p')
    systemctl restart hsdemo.service
    pid=$(systemctl show -P MainPID hsdemo.service)
    say demo-restarted pid=$pid
    i=0
    while [ $i -lt 100 ] && ! journalctl -u hsdemo.service -o cat --after-cursor="$cur" | grep -q result=2; do
      sleep 0.2; i=$((i + 1))
    done
    say demo-output "$(journalctl -u hsdemo.service -o cat --after-cursor="$cur" | grep '^result=' | sort | uniq -c | tr -s ' \n' '  ')"
    say demo-daemon "$(journalctl -u hotsplice.service -o cat | grep "patched pid $pid" | head -1)"
    say demo-show "$(hotsplice user show --pid "$pid" | tail -n +2 | head -1)"
    out=$(hotsplice check --from /hstest/feed); rc=$?; say check-with-demo rc=$rc "$out"
    systemctl stop hsdemo.service
  fi
  touch /hstest/phase2
  sync
  say init-done
  systemctl poweroff
else
  say booted2 $(uname -r)
  say boot-hook $(systemctl is-active hotsplice-boot.service)
  journalctl -b -o cat -u hotsplice-boot.service | sed 's/^/HSTEST hook: /'
  a=$(systemctl show -P ExecMainExitTimestampMonotonic hotsplice-boot.service)
  b=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)
  if [ "${a:-0}" -gt 0 ] && [ "$a" -lt "$b" ]; then r=yes; else r=no; fi
  say hook-before-multi-user $r hook-exit=$a multi-user=$b
  say uptrack-uname-r $(uptrack-uname -r)
  out=$(hotsplice check --from /hstest/feed); rc=$?; say check-after-reboot rc=$rc "$out"
  for u in hotsplice.service hotsplice-autoinstall.timer; do say unit2 $u $(systemctl is-active $u); done
  dpkg -r hotsplice > /hstest/remove.log 2>&1; say dpkg-remove rc=$?
  for m in /sys/kernel/livepatch/*; do say after-remove-livepatch ${m##*/} enabled=$(cat $m/enabled); done
  say after-remove-proc-version $(cut -c1-60 /proc/version)
  say after-remove-state $(ls /var/lib/hotsplice | tr '\n' ' ')
  command -v hotsplice > /dev/null; say after-remove-binary-found rc=$?
  dpkg -P hotsplice 2>&1 | sed 's/^/HSTEST purge: /'
  say after-purge-livepatch $(ls /sys/kernel/livepatch | tr '\n' ' ')
  sync
  say init-done
  systemctl poweroff
fi
