import { createRouter, createWebHistory } from 'vue-router'
import Login from './views/Login.vue'
import Dashboard from './views/Dashboard.vue'
import Incident from './views/Incident.vue'
import Ack from './views/Ack.vue'
import Inbox from './views/Inbox.vue'
import File from './views/File.vue'
// The case library draws its charts with ECharts: loaded with the page, not before.
const Cases = () => import('./views/Cases.vue')
import { session, loadSession } from './session.js'

export const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: '/', redirect: '/dashboard' },
    { path: '/login', component: Login, meta: { public: true, title: '登录' } },
    { path: '/dashboard', component: Dashboard, meta: { title: '态势总览' } },
    { path: '/incidents/:id', component: Incident, props: true, meta: { title: '事件详情' } },
    // A notification's "确认收到" link (services/notification/dispatch.py ack_url).
    { path: '/file', component: File, meta: { title: '报送舆情' } },
    { path: '/inbox', component: Inbox, meta: { title: '审批待办' } },
    { path: '/cases', component: Cases, meta: { title: '案例库' } },
    { path: '/ack/:id', component: Ack, props: true, meta: { title: '确认收到通知' } },
    { path: '/:rest(.*)*', redirect: '/dashboard' },
  ],
})

router.beforeEach(async (to) => {
  if (to.meta.public) return true
  if (!session.me) await loadSession()
  if (!session.me) return { path: '/login', query: { next: to.fullPath } }
  return true
})

router.afterEach((to) => {
  document.title = `${to.meta.title || ''} · 舆情处置平台`
})
