// SPDX-License-Identifier: GPL-2.0
/*
 * hotsplice test livepatch of pipe_read() (fs/pipe.c), for the test of a
 * transition that cannot finish: a task blocked reading an empty pipe sleeps
 * inside pipe_read(), so livepatch's consistency model cannot switch it
 * until it wakes (or until the fake signal livepatch sends after ~15 s).
 *
 * The replacement is a complete pipe reader (tasks that already switched
 * would run it while the transition is pending): it takes whole or partial
 * buffers from the tail of the ring, frees emptied buffers, sleeps while the
 * pipe is empty and still has writers, wakes writers that waited for room.
 * Unlike the original it does not handle watch-queue pipes (those are
 * refused with -EOPNOTSUPP) nor packet-mode pipes specially beyond ending
 * the read at a packet's end.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/pipe_fs_i.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/uio.h>
#include <linux/wait.h>

#ifndef HS_BUILD_ID
#error "HS_BUILD_ID (the target kernel's GNU build-id) must be defined"
#endif

static bool hs_pipe_has_data_or_eof(struct pipe_inode_info *pipe)
{
	return !pipe_empty(READ_ONCE(pipe->head), READ_ONCE(pipe->tail)) ||
	       !READ_ONCE(pipe->writers);
}

/*
 * Move up to @room bytes from the tail buffer into @to. Returns the bytes
 * moved or a negative errno; *@stop is set when this read must end here.
 */
static ssize_t hs_pipe_take(struct pipe_inode_info *pipe, struct iov_iter *to,
			    size_t room, bool *stop)
{
	unsigned int tail = pipe->tail;
	struct pipe_buffer *buf = &pipe->bufs[tail & (pipe->ring_size - 1)];
	size_t n = min_t(size_t, buf->len, room);
	int err;

	if (buf->len > room && (buf->flags & PIPE_BUF_FLAG_WHOLE))
		return -ENOBUFS;
	err = pipe_buf_confirm(pipe, buf);
	if (err)
		return err;
	if (copy_page_to_iter(buf->page, buf->offset, n, to) != n)
		return -EFAULT;
	buf->offset += n;
	buf->len -= n;
	if (buf->flags & PIPE_BUF_FLAG_PACKET) {
		buf->len = 0;	/* the rest of a packet is dropped */
		*stop = true;
	}
	if (buf->len == 0) {
		pipe_buf_release(pipe, buf);
		spin_lock_irq(&pipe->rd_wait.lock);
		pipe->tail = tail + 1;
		spin_unlock_irq(&pipe->rd_wait.lock);
	}
	return n;
}

static ssize_t hs_pipe_read(struct kiocb *iocb, struct iov_iter *to)
{
	struct file *filp = iocb->ki_filp;
	struct pipe_inode_info *pipe = filp->private_data;
	size_t left = iov_iter_count(to);
	bool room_made = false, stop = false;
	ssize_t got = 0;

	if (left == 0)
		return 0;
#ifdef CONFIG_WATCH_QUEUE
	if (pipe->watch_queue)
		return -EOPNOTSUPP;
#endif
	mutex_lock_nested(&pipe->mutex, I_MUTEX_PARENT);
	for (;;) {
		bool full = pipe_full(pipe->head, pipe->tail, pipe->max_usage);

		/* take what is there */
		while (left && !stop &&
		       !pipe_empty(smp_load_acquire(&pipe->head), pipe->tail)) {
			ssize_t n = hs_pipe_take(pipe, to, left, &stop);

			if (n < 0) {
				if (!got)
					got = n;
				stop = true;
				break;
			}
			got += n;
			left -= n;
			if (full)
				room_made = true;
		}
		if (got || stop || !left || !pipe->writers)
			break;
		if (filp->f_flags & O_NONBLOCK) {
			got = -EAGAIN;
			break;
		}
		/* empty with writers: sleep without the lock */
		mutex_unlock(&pipe->mutex);
		if (full)
			wake_up_interruptible_sync_poll(&pipe->wr_wait, EPOLLOUT | EPOLLWRNORM);
		kill_fasync(&pipe->fasync_writers, SIGIO, POLL_OUT);
		if (wait_event_interruptible_exclusive(pipe->rd_wait,
						       hs_pipe_has_data_or_eof(pipe)) < 0)
			return -ERESTARTSYS;
		mutex_lock_nested(&pipe->mutex, I_MUTEX_PARENT);
	}
	/* another exclusive reader may be waiting for what is left */
	if (!pipe_empty(pipe->head, pipe->tail))
		wake_up_interruptible_poll(&pipe->rd_wait, EPOLLIN | EPOLLRDNORM);
	mutex_unlock(&pipe->mutex);
	if (room_made) {
		wake_up_interruptible_sync_poll(&pipe->wr_wait, EPOLLOUT | EPOLLWRNORM);
		kill_fasync(&pipe->fasync_writers, SIGIO, POLL_OUT);
	}
	if (got > 0)
		file_accessed(filp);
	return got;
}

static struct klp_func hs_pipe_funcs[] = {
	{ .old_name = "pipe_read", .new_func = hs_pipe_read },
	{ }
};

static struct klp_object hs_pipe_objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = hs_pipe_funcs },
	{ }
};

static struct klp_patch hs_pipe_patch = {
	.mod = THIS_MODULE,
	.objs = hs_pipe_objs,
};

static int __init hs_pipe_init(void)
{
	return klp_enable_patch(&hs_pipe_patch);
}

static void __exit hs_pipe_exit(void)
{
}

module_init(hs_pipe_init);
module_exit(hs_pipe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hotsplice test update: replaces pipe_read (stuck-transition test)");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(hotsplice_id, "hspipe01");
MODULE_INFO(hotsplice_build_id, HS_BUILD_ID);
MODULE_INFO(hotsplice_release, HS_RELEASE);
MODULE_INFO(hotsplice_effective, HS_RELEASE ".hspipe");
