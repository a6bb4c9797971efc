# /hstest/run.sh in the Debian 12 test system (run by hstest.service after
# multi-user.target; its output is the serial console). Two boots: the
# first installs the package and applies a kernel patch, the second checks
# that the boot hook re-applied it, then removes and purges the package.
#
# With /hstest/xen (vm-test.sh --xen) the system runs as a Xen dom0 and the
# scenario is the dom0 one (xen_boot1, xen_boot2): `apt install` and
# `apt remove` instead of dpkg.
set +e
say() { echo "HSTEST $*"; }
# The newest journal entry matching the fields given, as JSON (one line).
journal_json() {
  journalctl -b -o json --output-fields=MESSAGE,PRIORITY,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT,HOTSPLICE_PATCH_ID,HOTSPLICE_TARGET,HOTSPLICE_RESULT,HOTSPLICE_PID "$@" | tail -1
}
# Runs a command as a oneshot systemd service, its output to the journal
# (as the units' is), and prints its output and exit status. (A unit file:
# systemd-run --wait needs D-Bus, which this minimal system has not.)
in_unit() {
  name=$1; shift
  printf '[Service]\nType=oneshot\nExecStart=%s\n' "$*" > /run/systemd/system/$name.service
  systemctl daemon-reload
  systemctl start $name.service; rc=$?
  journalctl -b -o cat -u $name.service | sed "s/^/HSTEST $name: /"
  say $name rc=$rc
}
# Proof that this system is Xen's control domain (dom0).
xen_dom0() {
  say hypervisor type=$(cat /sys/hypervisor/type) version=$(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor)$(cat /sys/hypervisor/version/extra)
  modprobe xenfs && mount -t xenfs xenfs /proc/xen
  say xen-capabilities $(cat /proc/xen/capabilities)
  say dmesg-xen "$(dmesg | grep -m1 'Booting kernel on')"
}
# After a reboot: what the boot hook did, in the journal, and that it was
# done before multi-user.target.
boot_hook_ran() {
  say boot-hook $(systemctl is-active hotsplice-boot.service)
  journalctl -b -o cat -u hotsplice-boot.service | sed 's/^/HSTEST hook: /'
  # journald may not attribute the lines of a process that has already
  # exited to its unit (docs/logging.md), so `-u` can miss the hook's own
  # lines on a loaded host: take them by identifier and text as well.
  journalctl -b -o cat -t hotsplice | grep '^hotsplice boot: ' | sed 's/^/HSTEST hook: /'
  say journal-reapplied "$(journal_json HOTSPLICE_RESULT=re-applied)"
  a=$(systemctl show -P ExecMainExitTimestampMonotonic hotsplice-boot.service)
  b=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)
  if [ "${a:-0}" -gt 0 ] && [ "$a" -lt "$b" ]; then r=yes; else r=no; fi
  say hook-before-multi-user $r hook-exit=$a multi-user=$b
}
done_and_poweroff() {
  sync
  say init-done
  systemctl poweroff
}
kernel_patch_state() {
  say $1-proc-version $(cut -c1-40 /proc/version)
  say $1-livepatch $(for m in /sys/kernel/livepatch/*; do [ -d "$m" ] && echo "${m##*/}:enabled=$(cat $m/enabled):transition=$(cat $m/transition)"; done)
  say $1-uptrack-uname-r $(uptrack-uname -r 2>/dev/null)
}
xen_boot1() {
  say booted $(uname -r) pid1=$(cat /proc/1/comm)
  xen_dom0
  deb=$(cat /hstest/debname)
  cp /hstest/hotsplice.deb "/root/$deb"
  (cd /root && apt install -y "./$deb") > /hstest/apt.log 2>&1; say apt-install rc=$?
  sed 's/^/HSTEST apt: /' /hstest/apt.log
  for u in hotsplice.service hotsplice-boot.service hotsplice-autoinstall.timer; do
    say unit $u $(systemctl is-enabled $u) $(systemctl is-active $u)
  done
  cp /hstest/test.pub /etc/hotsplice/keys/
  kernel_patch_state before
  # As a service would (the timer's autoinstall): the result lines go to
  # the journal with their fields.
  in_unit ksplice-upgrade /usr/sbin/ksplice -y kernel upgrade --from /hstest/feed
  kernel_patch_state applied
  say uname-r $(uname -r)
  say journal-applied "$(journal_json HOTSPLICE_RESULT=applied)"
  in_unit ksplice-remove /usr/sbin/ksplice -y kernel remove --all
  kernel_patch_state reverted
  say journal-removed "$(journal_json HOTSPLICE_RESULT=removed)"
  ksplice -y -q kernel upgrade --from /hstest/feed; say reapply rc=$?
  touch /hstest/phase2
  done_and_poweroff
}
xen_boot2() {
  say booted2 $(uname -r)
  xen_dom0
  boot_hook_ran
  kernel_patch_state rebooted
  apt remove -y hotsplice > /hstest/remove.log 2>&1; say apt-remove rc=$?
  sed 's/^/HSTEST apt: /' /hstest/remove.log
  kernel_patch_state after-remove
  command -v hotsplice > /dev/null; say after-remove-binary-found rc=$?
  say after-remove-state $(ls /var/lib/hotsplice | tr '\n' ' ')
  done_and_poweroff
}
if [ -f /hstest/xen ]; then
  if [ ! -f /hstest/phase2 ]; then xen_boot1; else xen_boot2; fi
  exit 0
fi
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
    say demo-journal "$(journal_json HOTSPLICE_RESULT=applied HOTSPLICE_PID=$pid)"
    say demo-show "$(hotsplice user show --pid "$pid" | tail -n +2 | head -1)"
    out=$(hotsplice check --from /hstest/feed); rc=$?; say check-with-demo rc=$rc "$out"
    systemctl stop hsdemo.service
  fi
  touch /hstest/phase2
  done_and_poweroff
else
  say booted2 $(uname -r)
  boot_hook_ran
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
  done_and_poweroff
fi
