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
